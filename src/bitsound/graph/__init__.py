"""The typed model graph: op definitions, IR, lowering from PyTorch, passes."""
