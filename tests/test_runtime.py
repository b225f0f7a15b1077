"""Process settings for training: glibc keeps large freed blocks, so a tensor made every step is not faulted in."""

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, torch
from encoder_clf.runtime import reuse_freed_blocks

def faults_of_a_fresh_gradient():
    torch.zeros(30522, 384)  # all-MiniLM-L6-v2's word-embedding gradient, made and freed once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.zeros(30522, 384)  # and made again, as at the next step
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_a_fresh_gradient()
took = reuse_freed_blocks()
for _ in range(10):  # the heap grows until a freed block fits the next one (over a run's first steps)
    faults_of_a_fresh_gradient()
print(json.dumps({"default": default, "took": took, "reused": faults_of_a_fresh_gradient()}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_a_47_mb_tensor_made_again_reuses_its_freed_block():
    result = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                       check=True).stdout)
    assert result["took"]
    assert result["default"] > 1000  # glibc unmapped the block: each of its pages is faulted in again
    assert result["reused"] < result["default"] / 20
