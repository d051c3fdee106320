"""Base models from the Hugging Face Hub: pinned to a commit, verified file by file, resumable,
and renamed into the catalog's folder only when whole (docs/operations.md, `oneseekctl pull`).

repo.py names what to pull, pin.py asks the Hub which commit and which files, fetch.py
downloads them into a staging folder, checks every byte and moves the folder into place.
Nothing here imports torch or transformers.
"""
