"""bgwork: a notebook-driven workbench that GRPO-trains a small LM to drive a browser (BrowserGym MiniWoB++)."""

__version__ = "0.1.0"
