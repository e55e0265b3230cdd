"""The training loop (``loop.py``) and its checkpoint glue (``checkpoint.py``)."""
