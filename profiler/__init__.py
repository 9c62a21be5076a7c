"""hwnas profiler: candidate blocks compiled with ExecuTorch or TVM, timed on a device, stored in SQLite."""

from profiler.blocks import ArchSpec, BlockKeyError, BlockSpec
from profiler.harness import ProfileOptions, ProfileResult, profile, profile_with
from profiler.measurement import Measurement, TimingProtocol
from profiler.spaces import SearchSpace, load_space
from profiler.store import Store, StoreError

__all__ = ["ArchSpec", "BlockKeyError", "BlockSpec", "Measurement", "ProfileOptions", "ProfileResult", "SearchSpace",
           "Store", "StoreError", "TimingProtocol", "load_space", "profile", "profile_with"]
