"""The Textual explorer. Importing it loads no torch: the model loads in a worker after the first frame."""
