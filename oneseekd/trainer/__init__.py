"""The trainer child process: the only part of oneseekd that imports torch, transformers or peft.

The daemon and oneseekctl start it as a separate process. The one module they import from
here is `outputs`, for publishing a run's committed outputs after its trainer died; it imports
torch, peft and the recipe only inside the functions the trainer alone calls
(tests/test_supervisor.py checks that importing the supervisor loads no torch).
"""
