"""The LocFT-BF editing library: load a model, resolve the edit location, train, snapshot.

No store, no daemon. Importing this package imports torch.
"""
