"""The trainer child process: the only part of oneseekd that imports torch, transformers or peft.

Nothing here is imported by the daemon or by oneseekctl; they start it as a separate process.
"""
