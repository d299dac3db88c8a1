"""Instruction-tuning data: the ``Example`` record and loading, saving and splitting it."""

from mbdefense.data.example import Example
from mbdefense.data.eval_sets import load_eval_examples
from mbdefense.data.loading import load_examples, save_examples
from mbdefense.data.splits import check_disjoint, split_examples

__all__ = ["Example", "check_disjoint", "load_eval_examples", "load_examples", "save_examples",
           "split_examples"]
