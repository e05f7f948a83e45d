"""Datasets for training and `predict`: names or user files -> `Dataset` of named numpy arrays.

Pipeline position: outside the compiler proper; the trainer feeds these arrays to the executable.
"""
from nnlang.data.cache import DataError
from nnlang.data.dataset import Dataset, Split
from nnlang.data.registry import DATASETS, canonical_name, list_datasets, load_dataset

__all__ = ["DATASETS", "DataError", "Dataset", "Split", "canonical_name", "list_datasets",
           "load_dataset"]
