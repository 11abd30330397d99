"""The fixed parameter vectors of LeNet-5's output layer.

LeCun et al. (1998), Sec. II-B and Fig. 3: the output layer is 10 Euclidean RBF units, one per
class, each computing ``y_i = sum_j (x_j - w_ij)^2`` over the 84 outputs of F6. The parameter
vectors ``w_i`` are fixed, not learned: each is a stylized 7x12 bitmap of digit ``i`` (7 columns,
12 rows), with +1 for ink and -1 for paper. Such distributed codes let F6 be trained toward a
target that resembles the digit, and confusable digits get codes that are close.

The bitmaps below are drawn for this library in the spirit of the paper's Fig. 3 (a clean 7x12
printed font; '#' is ink, '.' is paper). Rows are read top to bottom and each row left to right,
so the 84-vector is the row-major flattening of the 12x7 bitmap.
"""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["DIGIT_BITMAPS", "CODE_ROWS", "CODE_COLS", "output_codes", "render_codes"]

CODE_ROWS = 12
CODE_COLS = 7

# fmt: off
DIGIT_BITMAPS: Tuple[Tuple[str, ...], ...] = (
    (  # 0
        "..###..",
        ".#...#.",
        "##...##",
        "#.....#",
        "#.....#",
        "#.....#",
        "#.....#",
        "#.....#",
        "#.....#",
        "##...##",
        ".#...#.",
        "..###..",
    ),
    (  # 1
        "...##..",
        "..###..",
        ".####..",
        "...##..",
        "...##..",
        "...##..",
        "...##..",
        "...##..",
        "...##..",
        "...##..",
        "...##..",
        ".######",
    ),
    (  # 2
        "..###..",
        ".#...#.",
        "#.....#",
        "......#",
        "......#",
        ".....#.",
        "....#..",
        "...#...",
        "..#....",
        ".#.....",
        "#......",
        "#######",
    ),
    (  # 3
        ".#####.",
        "#.....#",
        "......#",
        "......#",
        ".....#.",
        "..###..",
        ".....#.",
        "......#",
        "......#",
        "......#",
        "#.....#",
        ".#####.",
    ),
    (  # 4
        "....##.",
        "...#.#.",
        "..#..#.",
        ".#...#.",
        "#....#.",
        "#....#.",
        "#######",
        ".....#.",
        ".....#.",
        ".....#.",
        ".....#.",
        ".....#.",
    ),
    (  # 5
        "#######",
        "#......",
        "#......",
        "#......",
        "######.",
        "......#",
        "......#",
        "......#",
        "......#",
        "......#",
        "#.....#",
        ".#####.",
    ),
    (  # 6
        "..####.",
        ".#.....",
        "#......",
        "#......",
        "#.###..",
        "##...#.",
        "#.....#",
        "#.....#",
        "#.....#",
        "#.....#",
        ".#...#.",
        "..###..",
    ),
    (  # 7
        "#######",
        "......#",
        "......#",
        ".....#.",
        ".....#.",
        "....#..",
        "....#..",
        "...#...",
        "...#...",
        "...#...",
        "...#...",
        "...#...",
    ),
    (  # 8
        "..###..",
        ".#...#.",
        "#.....#",
        "#.....#",
        ".#...#.",
        "..###..",
        ".#...#.",
        "#.....#",
        "#.....#",
        "#.....#",
        ".#...#.",
        "..###..",
    ),
    (  # 9
        "..###..",
        ".#...#.",
        "#.....#",
        "#.....#",
        "#.....#",
        ".#...##",
        "..###.#",
        "......#",
        "......#",
        "......#",
        ".....#.",
        ".####..",
    ),
)
# fmt: on


def _check_bitmaps() -> None:
    assert len(DIGIT_BITMAPS) == 10
    for d, rows in enumerate(DIGIT_BITMAPS):
        assert len(rows) == CODE_ROWS, f"digit {d}: {len(rows)} rows"
        for r in rows:
            assert len(r) == CODE_COLS and set(r) <= {"#", "."}, f"digit {d}: bad row {r!r}"


_check_bitmaps()


def output_codes(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The RBF parameter vectors: a new [10, 84] tensor of +1 (ink) / -1 (paper).

    Row ``i`` is digit ``i``'s 12x7 bitmap flattened row-major (top row first).
    """
    values = [[1.0 if ch == "#" else -1.0 for row in rows for ch in row] for rows in DIGIT_BITMAPS]
    return torch.tensor(values, dtype=dtype)


def render_codes(ink: str = "#", paper: str = ".") -> str:
    """The 10 bitmaps as text: two rows of five, each headed by its digit."""
    gap = "   "
    blocks = []
    for first in (0, 5):
        digits = range(first, first + 5)
        lines = [gap.join(str(d).center(CODE_COLS) for d in digits).rstrip()]
        for r in range(CODE_ROWS):
            cells = ("".join(ink if ch == "#" else paper for ch in DIGIT_BITMAPS[d][r]) for d in digits)
            lines.append(gap.join(cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
