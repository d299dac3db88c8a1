"""mbdefense: MB-Defense (defensive poisoning + backdoor neutralization) for instruction-tuned
language models, with attack simulation, baselines and evaluation."""

__version__ = "0.1.0"
