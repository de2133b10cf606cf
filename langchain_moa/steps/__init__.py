"""The twelve MoA steps (names from mixture-llm); see each class for details."""

from langchain_moa.steps._aggregate import Aggregate
from langchain_moa.steps._consensus import AdaptiveMajorityVote, MajorityVote
from langchain_moa.steps._extract import ChoiceAnswer, JsonFieldAnswer, NumberAnswer, RegexAnswer
from langchain_moa.steps._fusion import Fusion, FusionAnalysis
from langchain_moa.steps._judges import Rank, Vote
from langchain_moa.steps._layers import Propose, Refine, Synthesize
from langchain_moa.steps._recursive import RecursiveAggregate
from langchain_moa.steps._sequential import SequentialAggregate
from langchain_moa.steps._transforms import Dropout, Filter, Map, Sample, Shuffle, Take

__all__ = [
    "Propose",
    "Synthesize",
    "Aggregate",
    "Refine",
    "Rank",
    "Vote",
    "Shuffle",
    "Dropout",
    "Sample",
    "Take",
    "Filter",
    "Map",
    # self-consistency (no model call) and adaptive sampling
    "MajorityVote",
    "AdaptiveMajorityVote",
    "NumberAnswer",
    "ChoiceAnswer",
    "RegexAnswer",
    "JsonFieldAnswer",
    # aggregation beyond one call: judge-then-writer, recursive, sliding window
    "Fusion",
    "FusionAnalysis",
    "RecursiveAggregate",
    "SequentialAggregate",
]
