"""Tests for lenet5_fast.codes: the stylized 7x12 digit bitmaps used as RBF output codes."""

from __future__ import annotations

import itertools

import pytest
import torch

from lenet5_fast.codes import CODE_COLS, CODE_ROWS, DIGIT_BITMAPS, output_codes, render_codes

MIN_HAMMING = 15  # the current bitmaps' minimum pairwise distance (digits 0 and 6)


def test_bitmap_geometry():
    assert (CODE_ROWS, CODE_COLS) == (12, 7)
    assert len(DIGIT_BITMAPS) == 10
    for rows in DIGIT_BITMAPS:
        assert isinstance(rows, tuple) and len(rows) == 12
        for row in rows:
            assert len(row) == 7 and set(row) <= {"#", "."}
        # uses most of the height: ink in the top and bottom two rows
        assert "#" in rows[0] + rows[1] and "#" in rows[-1] + rows[-2]


def test_output_codes_shape_values():
    c = output_codes()
    assert c.shape == (10, 84) and c.dtype == torch.float32
    assert torch.all((c == 1) | (c == -1))
    assert output_codes(torch.float64).dtype == torch.float64
    assert torch.equal(output_codes(torch.float64).float(), c)
    # row-major flattening of the 12x7 bitmap
    for d, rows in enumerate(DIGIT_BITMAPS):
        for r, row in enumerate(rows):
            for k, ch in enumerate(row):
                assert c[d, r * 7 + k].item() == (1.0 if ch == "#" else -1.0)
    # a fresh tensor each call
    c[0, 0] = 5
    assert output_codes()[0, 0].item() in (1.0, -1.0)


def test_codes_distinct_and_far_apart():
    c = output_codes()
    dist = (c[:, None, :] != c[None, :, :]).sum(-1)
    pairs = {(i, j): int(dist[i, j]) for i, j in itertools.combinations(range(10), 2)}
    assert all(v > 0 for v in pairs.values())  # all distinct
    assert min(pairs.values()) >= MIN_HAMMING, sorted(pairs.items(), key=lambda kv: kv[1])[:5]
    # every digit has a reasonable amount of ink (strokes, not blobs or blanks)
    ink = (c > 0).sum(1)
    assert torch.all((ink >= 15) & (ink <= 42)), ink


def test_render_codes():
    text = render_codes()
    lines = text.splitlines()
    header_lines = [ln for ln in lines if ln.strip() and set(ln.strip()) <= set("0123456789 ")]
    labels = "".join(header_lines).split()
    assert labels == [str(d) for d in range(10)]
    for d in range(10):
        for row in DIGIT_BITMAPS[d]:
            assert row in text
    alt = render_codes(ink="@", paper=" ")
    assert "#" not in alt and "." not in alt and "@" in alt
    assert alt.count("@") == text.count("#")


def test_render_codes_layout_exactly():
    """Two blocks of five digits, each a header line (the digit centred over its 7 columns, no
    trailing spaces) over 12 bitmap rows 3 spaces apart, a blank line between the blocks, and a
    final newline (mutation testing: lstrip for rstrip, or another ending, passed test_render_codes)."""
    headers = ["   0         1         2         3         4", "   5         6         7         8         9"]
    blocks = ["\n".join([headers[b]] + ["   ".join(DIGIT_BITMAPS[d][r] for d in range(5 * b, 5 * b + 5))
                                        for r in range(12)]) for b in (0, 1)]
    assert render_codes() == blocks[0] + "\n\n" + blocks[1] + "\n"


def test_the_bitmap_check_accepts_the_bitmaps_and_refuses_bad_ones(monkeypatch):
    """codes._check_bitmaps runs at import; called again it passes on the real bitmaps and fails
    on a wrong count of digits, of rows, of columns or a stray character."""
    from lenet5_fast import codes

    codes._check_bitmaps()
    good = codes.DIGIT_BITMAPS
    bad_row = good[3][:5] + ("#.x.#..",) + good[3][6:]
    for bitmaps in (good[:9], good[:3] + (good[3][:11],) + good[4:], good[:3] + (good[3][:5] + ("#.#.#.",)
                    + good[3][6:],) + good[4:], good[:3] + (bad_row,) + good[4:]):
        monkeypatch.setattr(codes, "DIGIT_BITMAPS", bitmaps)
        with pytest.raises(AssertionError):
            codes._check_bitmaps()
