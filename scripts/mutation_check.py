"""Do the modeling tests notice when the model breaks? Apply single-line mutations, one at a time, and check.

Each mutation below changes one line of `modeling_ebranchformer/modeling.py` or `modeling_quartznet.py` in a
way that breaks a behaviour the tests claim to guard (a padding mask, a scale, a residual, an
initialisation, a length formula). The repository is copied once to a temporary folder; each mutant is
written into that copy, the test file of its model runs there with `pytest -x -q`, and the copy's original
bytes are written back before the next one. The working tree is never touched.

    python scripts/mutation_check.py                 # all mutations, a table, exit 1 if any survives
    python scripts/mutation_check.py --only mask     # the mutations whose name contains "mask"
    python scripts/mutation_check.py --root DIR      # test another checkout (e.g. older tests)

A mutant is "caught" when pytest fails. Exit status: 0 when every mutant is caught, 1 otherwise, 2 when a
mutation no longer applies (its line changed: update the mutation) or the unmutated tests fail.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EBRANCHFORMER = "modeling_ebranchformer/modeling.py"
QUARTZNET = "modeling_ebranchformer/modeling_quartznet.py"
TESTS = {EBRANCHFORMER: "tests/test_modeling.py", QUARTZNET: "tests/test_modeling_quartznet.py"}


@dataclass
class Mutation:
    name: str
    file: str
    old: str  # must occur exactly once in `file`
    new: str


MUTATIONS = [
    Mutation(
        "CSGU: no padding mask before its depthwise conv",
        EBRANCHFORMER,
        "gate = masked_depthwise_conv(self.conv, gate, frame_mask, self.context, past, chunk)",
        "gate = masked_depthwise_conv(self.conv, gate, None, self.context, past, chunk)",
    ),
    Mutation(
        "Merge: no padding mask before its depthwise conv",
        EBRANCHFORMER,
        "masked_depthwise_conv(self.depthwise_conv, merged, frame_mask, self.context, past, chunk)",
        "masked_depthwise_conv(self.depthwise_conv, merged, None, self.context, past, chunk)",
    ),
    Mutation(
        "SDPA: key padding mask ignored",
        EBRANCHFORMER,
        "            attention_mask=attention_mask,\n            dropout=dropout,",
        "            attention_mask=None,\n            dropout=dropout,",
    ),
    Mutation(
        "Eager attention: key mask inverted",
        EBRANCHFORMER,
        "scores.masked_fill(~attention_mask,",
        "scores.masked_fill(attention_mask,",
    ),
    Mutation(
        "Eager attention: no 1/sqrt(head_dim) scale",
        EBRANCHFORMER,
        "(query @ key.transpose(-1, -2)) * scaling",
        "(query @ key.transpose(-1, -2))",
    ),
    Mutation(
        "Dropout: no 1/(1-p) rescale",
        EBRANCHFORMER,
        "return hidden_states * keep * (1.0 / (1.0 - self.p))",
        "return hidden_states * keep",
    ),
    Mutation(
        "FFN1: macaron 1/2 dropped",
        EBRANCHFORMER,
        "hidden_states + 0.5 * self.dropout(self.ffn1(",
        "hidden_states + self.dropout(self.ffn1(",
    ),
    Mutation(
        "Merge: residual connection dropped",
        EBRANCHFORMER,
        "hidden_states = hidden_states + self.dropout(merged)",
        "hidden_states = self.dropout(merged)",
    ),
    Mutation("CSGU init: conv weight N(0, 0.02) instead of N(0, 1e-6)", EBRANCHFORMER, "std=1e-6)", "std=0.02)"),
    Mutation("CSGU init: conv bias 0 instead of 1", EBRANCHFORMER, "init.ones_(module.", "init.zeros_(module."),
    Mutation(
        "Output lengths: floor(T / 4) instead of ceil",
        EBRANCHFORMER,
        "torch.div(feature_lengths + stride - 1, stride,",
        "torch.div(feature_lengths, stride,",
    ),
    Mutation(
        "QuartzNet: masked() returns its input unmasked",
        QUARTZNET,
        "return hidden_states if frame_mask is None else hidden_states * frame_mask",
        "return hidden_states",
    ),
    Mutation(
        "QuartzNet: no padding mask before the depthwise conv",
        QUARTZNET,
        "self.depthwise_conv(masked(hidden_states, frame_mask))",
        "self.depthwise_conv(hidden_states)",
    ),
    Mutation(
        "QuartzNet: residual dropped",
        QUARTZNET,
        "hidden_states = hidden_states + residual",
        "hidden_states = hidden_states",
    ),
    Mutation(
        "QuartzNet output lengths: T // stride instead of (T - 1) // stride + 1",
        QUARTZNET,
        'torch.div(feature_lengths - 1, stride, rounding_mode="floor") + 1',
        'torch.div(feature_lengths, stride, rounding_mode="floor")',
    ),
]


def run_tests(copy: Path, test_file: str) -> tuple[bool, float, str]:
    """(passed, seconds, last output line) of `pytest -x -q test_file` in `copy`."""
    start = time.perf_counter()
    # One thread: the models are tiny, and on a shared machine two spinning threads per test cost 10x more.
    env = {
        "OMP_NUM_THREADS": "1",
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "COLUMNS": "300",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test_file],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith("FAILED ")]  # -x: at most one
    return result.returncode == 0, time.perf_counter() - start, (failed or lines or [""])[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to test (default: this one)")
    parser.add_argument("--only", default="", help="run only mutations whose name contains this (case-insensitive)")
    parser.add_argument("--skip_baseline", action="store_true", help="do not first check the unmutated tests pass")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if args.only.lower() in m.name.lower()]
    total = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(
            args.root.resolve(),
            copy,
            ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "data", "outputs", "runs"),
        )
        originals = {f: (copy / f).read_bytes() for f in TESTS}
        stale = [m.name for m in mutations if originals[m.file].decode().count(m.old) != 1]
        if stale:
            print("These mutations no longer apply (the line is gone or not unique):", *stale, sep="\n  ")
            return 2
        if not args.skip_baseline:
            for test_file in sorted({TESTS[m.file] for m in mutations}):
                passed, seconds, last = run_tests(copy, test_file)
                print(f"baseline {test_file}: {'passes' if passed else 'FAILS'} ({seconds:.1f} s) {last}")
                if not passed:
                    return 2

        rows = []
        for m in mutations:
            path = copy / m.file
            try:
                path.write_bytes(originals[m.file].decode().replace(m.old, m.new).encode())
                passed, seconds, last = run_tests(copy, TESTS[m.file])
            finally:
                path.write_bytes(originals[m.file])
            rows.append((m.name, not passed, seconds))
            print(
                f"{'caught' if not passed else 'SURVIVED':8s} {seconds:5.1f} s  {m.name}\n{'':17s}{last[:150]}",
                flush=True,
            )

    width = max(len(r[0]) for r in rows)
    print(f"\n| {'mutation':{width}s} | caught | seconds |\n|{'-' * (width + 2)}|--------|---------|")
    for name, caught, seconds in rows:
        print(f"| {name:{width}s} | {'yes' if caught else 'NO':6s} | {seconds:7.1f} |")
    survivors = [name for name, caught, _ in rows if not caught]
    print(f"\n{len(rows) - len(survivors)}/{len(rows)} mutants caught in {time.perf_counter() - total:.0f} s")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
