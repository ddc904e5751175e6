"""Each of the shim's CPU kernels (src/cpu/) against a plain loop in numpy, one op at a time through the test-only
entry point gmn_testing_cpu_op: edge tiles of 1-7 rows, sums of one term, mul_mat just below and above the size the
shim's kernel takes, strided and transposed operands, 1 to 4 threads, and every kernel with its per-thread scratch
buffer taken away (the fallbacks of an allocation that failed).

Values that a kernel promises bit for bit are compared bit for bit: the matrix products add each element's terms in
order, one multiply-add (fused where the CPU fuses it) per term; the copies, gathers, scatters and sums add in ggml's
order. Only the activations' polynomial and ggml's own products are compared to a tolerance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ggml_mnist import _native as this_build
from ggml_mnist._ffi import ffi, lib

THREADS = (1, 2, 3, 4)
KERNELS = [ffi.string(lib.gmn_kernel_name(i)).decode() for i in range(lib.GMN_KERNEL_COUNT)]
FMA = bool(lib.gmn_testing_cpu_fma())
MM_MIN_N = int(lib.gmn_testing_cpu_mm_min_n())


class Operand:
    """A ggml operand: ne (ne[0] fastest) over a flat buffer with element strides nb; .view is numpy's picture of it
    (shape ne reversed), so view[i1, i0] is element (i0, i1)."""

    def __init__(self, buffer: np.ndarray, ne: tuple, nb: tuple) -> None:
        self.buffer = np.ascontiguousarray(buffer).reshape(-1)
        self.ne = tuple(ne) + (1,) * (4 - len(ne))
        self.nb = tuple(nb) + (nb[-1] * ne[-1],) * (4 - len(nb))
        item = self.buffer.itemsize
        self.view = np.lib.stride_tricks.as_strided(
            self.buffer, shape=tuple(ne)[::-1], strides=tuple(s * item for s in nb[: len(ne)])[::-1]
        )


def dense(values: np.ndarray) -> Operand:
    """A contiguous operand holding a numpy array (its last axis becomes ne[0])."""
    ne = values.shape[::-1]
    nb = [1]
    for n in ne + (1,) * (3 - len(ne)):
        nb.append(nb[-1] * n)
    return Operand(values, ne, nb[:4])


def rows(rng: np.random.Generator, ne0: int, ne1: int, gap: int = 0) -> Operand:
    """Random f32 rows of ne0 floats, each gap floats after the previous one ends (a view into a wider matrix)."""
    ld = ne0 + gap
    return Operand(rng.standard_normal(ld * ne1).astype(np.float32), (ne0, ne1), (1, ld))


def columns(rng: np.random.Generator, ne0: int, ne1: int) -> Operand:
    """A transposed f32 operand: element (i0, i1) at i0 * ne1 + i1, as mul_mat's backward pass hands out_prod."""
    return Operand(rng.standard_normal(ne0 * ne1).astype(np.float32), (ne0, ne1), (ne1, 1))


def run(
    op: int,
    params: list[int],
    operands: list[Operand],
    threads: int = 1,
    adopt: bool = True,
    room: int = 1 << 22,
    native: Any = None,
):
    """The op's result as numpy sees it (shape ne reversed, trailing 1s of ne dropped) and the nodes each kernel took.
    ``native`` is another build's native module (bench/gemm_shapes.py); default: this build's."""
    ffi, lib = (native or this_build).ffi, (native or this_build).lib
    arrays = ffi.new("struct gmn_testing_array[]", max(len(operands), 1))
    for a, o in zip(arrays, operands):
        a.i32 = int(o.buffer.dtype == np.int32)
        a.ne = list(o.ne)
        a.nb = list(o.nb)
        a.data = ffi.cast("void *", ffi.from_buffer(o.buffer))
        a.n = o.buffer.size
    result = np.empty(room, np.float32)
    out = ffi.new("struct gmn_testing_array *")
    out.data = ffi.cast("void *", ffi.from_buffer(result))
    out.n = room
    taken = ffi.new("int64_t[]", lib.GMN_KERNEL_COUNT)
    p = ffi.new("int64_t[]", list(params) or [0])
    status = lib.gmn_testing_cpu_op(op, p, len(params), arrays, len(operands), threads, int(adopt), out, taken)
    assert status == lib.GMN_OK, ffi.string(lib.gmn_last_error()).decode()
    ne = list(out.ne)
    while len(ne) > 1 and ne[-1] == 1:
        ne.pop()
    n = int(np.prod(ne))
    values = result[:n].view(np.int32) if out.i32 else result[:n]
    return values.reshape(ne[::-1]).copy(), {name: int(taken[i]) for i, name in enumerate(KERNELS) if taken[i]}


@pytest.fixture(params=[False, True], ids=["scratch", "no-scratch"])
def no_scratch(request):
    """Runs the test with the kernels' thread scratch buffers, then again as if none could be allocated."""
    lib.gmn_testing_cpu_no_scratch(int(request.param))
    yield request.param
    lib.gmn_testing_cpu_no_scratch(0)


def multiply_add(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """a * b + s in float32 as the kernels compute it: one rounding where the CPU fuses multiply-adds (emulated
    exactly: the product is exact in float64, the sum is rounded to odd there and then to nearest in float32), else
    the product rounded and then the sum."""
    if not FMA:
        return (a * b).astype(np.float32) + s
    p = a.astype(np.float64) * b.astype(np.float64)
    c = s.astype(np.float64)
    t = p + c
    back = t - p
    err = (p - (t - back)) + (c - back)  # t + err is exactly p + c
    even = (t.view(np.int64) & 1) == 0
    t = np.where((err != 0) & even, np.nextafter(t, np.where(err > 0, np.inf, -np.inf)), t)
    return t.astype(np.float32)


def sequential_product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """out[c, i] = sum over k = 0, 1, ... of left[k, i] * right[k, c], one multiply-add per term in order."""
    s = np.zeros((right.shape[1], left.shape[1]), np.float32)
    for k in range(left.shape[0]):
        s = multiply_add(right[k][:, None], left[k][None, :], s)
    return s


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.int32)


def test_the_fma_emulation_rounds_once() -> None:
    a = np.array([1 + 2**-12], np.float32)
    fused = multiply_add(a, a, np.array([-(1 + 2**-11)], np.float32))
    assert fused[0] == (np.float32(2**-24) if FMA else 0.0)


# ---- the matrix products ---------------------------------------------------------------------------------------
# out_prod d [M, N] = a [M, J] b [N, J]^T. The cases reach each way gmn_gemm.c's one driver is set up for it: tiles
# shared along rows of tiles (a's rows more than 16 floats apart, 3+ column tiles), as mul_mat's (b's values side by
# side, too few column tiles), down columns (b transposed; runs of tiles shorter than a column at 3-4 threads), the
# transposed sum written to strided rows of the result (8 or 16 outputs, 6-16 rows, 256+ terms), a read in place
# (one row tile of 8 or 16 rows), sums of one term and of two blocks of 256, and last row tiles of 1-7.
OUT_PROD = [  # M, N, J, gap between a's rows, b's layout
    (1, 1, 1, 0, "rows"),
    (7, 5, 1, 0, "rows"),
    (3, 13, 40, 20, "rows"),
    (23, 13, 300, 0, "rows"),
    (24, 6, 300, 0, "rows"),
    (9, 8, 300, 0, "rows"),
    (16, 16, 260, 3, "rows"),
    (8, 40, 30, 5, "columns"),
    (16, 7, 3, 0, "rows"),
    (5, 16, 300, 0, "rows"),
    (12, 20, 70, 0, "columns"),
    (40, 20, 70, 0, "columns"),
    (605, 7, 20, 0, "columns"),
    (563, 13, 40, 0, "rows"),
    (17, 64, 33, 4, "rows"),
    (6, 9, 513, 30, "columns"),
]


@pytest.mark.parametrize("case", OUT_PROD, ids=lambda c: "x".join(map(str, c[:4])) + c[4][0])
def test_out_prod_adds_each_term_in_order(case, no_scratch) -> None:
    M, N, J, gap, layout = case
    rng = np.random.default_rng(M * 1000 + N * 10 + J)
    a = rows(rng, M, J, gap)
    b = rows(rng, N, J) if layout == "rows" else columns(rng, N, J)
    expected = sequential_product(a.view, b.view)
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_OUT_PROD, [], [a, b], threads)
        assert taken == {"out_prod": 1}
        np.testing.assert_array_equal(bits(got.reshape(N, M)), bits(expected), err_msg=f"{threads} threads")


# mul_mat d [M, N] = a [K, M]^T b [K, N]: 1-7 rows left over, sums of one term and of two blocks (K above 2048),
# rows apart by more than their length, N just below (ggml's product) and at or above the shim's threshold.
MUL_MAT = [  # M, N, K, gap between a's rows, gap between b's rows
    (1, MM_MIN_N, 1, 0, 0),
    (7, MM_MIN_N, 5, 0, 0),
    (9, MM_MIN_N + 1, 33, 3, 0),
    (16, 70, 16, 0, 5),
    (23, 100, 50, 2, 2),
    (40, MM_MIN_N, 7, 0, 0),
    (3, 130, 2100, 0, 1),
    (33, 64, 300, 5, 7),
]


@pytest.mark.parametrize("case", MUL_MAT, ids=lambda c: "x".join(map(str, c)))
def test_mul_mat_adds_each_term_in_order(case, no_scratch) -> None:
    M, N, K, gap_a, gap_b = case
    rng = np.random.default_rng(M * 1000 + N * 10 + K)
    a, b = rows(rng, K, M, gap_a), rows(rng, K, N, gap_b)
    expected = sequential_product(a.view.T, b.view.T)
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_MUL_MAT, [], [a, b], threads)
        assert taken == {"mul_mat": 1}
        np.testing.assert_array_equal(bits(got.reshape(N, M)), bits(expected), err_msg=f"{threads} threads")


@pytest.mark.parametrize("n", [1, 7, MM_MIN_N - 1])
def test_mul_mat_of_fewer_columns_stays_with_ggml(n: int) -> None:
    rng = np.random.default_rng(n)
    a, b = rows(rng, 20, 9, 2), rows(rng, 20, n, 1)
    got, taken = run(lib.GMN_TESTING_MUL_MAT, [], [a, b], 2)
    assert taken == {}
    np.testing.assert_allclose(got.reshape(n, 9), b.view @ a.view.T, rtol=1e-5, atol=1e-5)


def test_the_products_adopt_nothing_when_asked_not_to() -> None:
    rng = np.random.default_rng(5)
    a, b = rows(rng, 20, 9), rows(rng, 20, MM_MIN_N)
    got, taken = run(lib.GMN_TESTING_MUL_MAT, [], [a, b], 2, adopt=False)
    assert taken == {}
    np.testing.assert_allclose(got.reshape(MM_MIN_N, 9), b.view @ a.view.T, rtol=1e-5, atol=1e-5)


# ---- the row kernels: the same bits as ggml's own ------------------------------------------------------------
@pytest.mark.parametrize("nc", [1, 5, 8, 16])
def test_get_rows_copies_the_indexed_rows(nc: int) -> None:
    rng = np.random.default_rng(nc)
    src = rows(rng, nc, 30, gap=3)
    idx = rng.integers(0, 30, 77).astype(np.int32)
    expected = src.view[idx]
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_GET_ROWS, [], [src, dense(idx)], threads)
        assert taken == {"get_rows": 1}
        np.testing.assert_array_equal(bits(got.reshape(77, nc)), bits(expected))
    ggml, taken = run(lib.GMN_TESTING_GET_ROWS, [], [src, dense(idx)], 2, adopt=False)
    assert taken == {}
    np.testing.assert_array_equal(bits(ggml), bits(got))


@pytest.mark.parametrize("nc", [1, 5, 8, 16])
def test_get_rows_back_adds_each_row_in_index_order(nc: int) -> None:
    rng = np.random.default_rng(10 + nc)
    n, R = 90, 23
    grad = rows(rng, nc, n, gap=2)
    idx = rng.integers(0, R, n).astype(np.int32)
    expected = np.zeros((R, nc), np.float32)
    for i in range(n):
        expected[idx[i]] = expected[idx[i]] + grad.view[i]
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_GET_ROWS_BACK, [R], [grad, dense(idx)], threads)
        assert taken == {"get_rows_back": 1}
        np.testing.assert_array_equal(bits(got.reshape(R, nc)), bits(expected))
    ggml, _ = run(lib.GMN_TESTING_GET_ROWS_BACK, [R], [grad, dense(idx)], 2, adopt=False)
    np.testing.assert_array_equal(bits(ggml), bits(got))


@pytest.mark.parametrize(
    "shape", [(50, 1), (50, 7), (9, 8), (13, 9), (3, 4, 5, 20), (37, 1029), (6, 2, 515), (300, 264)]
)
def test_repeat_back_sums_the_rows_in_memory_order(shape: tuple) -> None:
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    expected = np.zeros(shape[-1], np.float32)
    for r in flat:
        expected = expected + r
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_REPEAT_BACK, [], [dense(x)], threads)
        assert taken == {"repeat_back": 1}
        np.testing.assert_array_equal(bits(got), bits(expected))
    ggml, _ = run(lib.GMN_TESTING_REPEAT_BACK, [], [dense(x)], 2, adopt=False)
    np.testing.assert_array_equal(bits(ggml), bits(got))


@pytest.mark.parametrize("nc, rows", [(1, 50), (7, 13), (8, 9), (1024, 37), (40, 1)])
def test_repeat_copies_the_vector_into_every_row(nc: int, rows: int) -> None:
    """The backward pass of a sum over rows (batch normalisation's statistics) runs on every thread, not ggml's one."""
    v = np.random.default_rng(nc).standard_normal(nc).astype(np.float32)
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_REPEAT, [rows], [dense(v)], threads)
        assert taken == {"repeat": 1}
        np.testing.assert_array_equal(bits(got.reshape(rows, nc)), bits(np.tile(v, (rows, 1))))
    ggml, _ = run(lib.GMN_TESTING_REPEAT, [rows], [dense(v)], 2, adopt=False)
    np.testing.assert_array_equal(bits(ggml), bits(got))


def test_repeat_of_rows_stays_with_ggml() -> None:
    """The kernel repeats one vector; a block of rows repeated is ggml's, and comes out the same."""
    block = np.random.default_rng(3).standard_normal((2, 5)).astype(np.float32)
    got, taken = run(lib.GMN_TESTING_REPEAT, [6], [dense(block)], 2)
    assert taken == {}
    np.testing.assert_array_equal(bits(got.reshape(6, 5)), bits(np.tile(block, (3, 1))))


ACC = [  # a's shape, b's shape, b's rows apart in a (floats), in place
    ((50,), (17,), 17, 0),
    ((7, 9), (3, 4), 9, 0),
    ((7, 9), (3, 4), 12, 1),
    ((60,), (5, 11), 12, 0),
    ((4, 5, 6), (2, 3, 5), 5, 0),
    ((300,), (1, 300), 300, 1),
]


@pytest.mark.parametrize("case", ACC, ids=lambda c: f"{c[1]}in{c[0]}s{c[2]}{'i' if c[3] else ''}")
def test_acc_adds_b_at_the_front(case) -> None:
    a_shape, b_shape, stride, inplace = case
    rng = np.random.default_rng(stride)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    expected = a.reshape(-1).copy()
    for r, row in enumerate(b.reshape(-1, b_shape[-1])):
        at = r * stride
        expected[at : at + row.size] = expected[at : at + row.size] + row
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_ACC, [stride, inplace], [dense(a), dense(b)], threads)
        assert taken == {"acc": 1}
        np.testing.assert_array_equal(bits(got.reshape(-1)), bits(expected))
    ggml, _ = run(lib.GMN_TESTING_ACC, [stride, inplace], [dense(a), dense(b)], 2, adopt=False)
    np.testing.assert_array_equal(bits(ggml), bits(got))


def test_acc_of_strided_rows_stays_with_ggml() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 10)).astype(np.float32)
    b = rows(rng, 4, 3, gap=2)
    got, taken = run(lib.GMN_TESTING_ACC, [10, 0], [dense(a), b], 2)
    assert taken == {}
    expected = a.copy()
    expected[:3, :4] += b.view
    np.testing.assert_array_equal(bits(got), bits(expected))


# ---- the channels-last ops ----------------------------------------------------------------------------------
WINDOWS = [  # C, W, H, N, kernel side, stride, padding
    (1, 6, 5, 2, 1, 1, 0),
    (3, 7, 6, 2, 3, 1, 1),
    (8, 9, 7, 3, 3, 1, 1),
    (2, 11, 9, 2, 5, 2, 2),
    (5, 8, 10, 1, 2, 3, 0),
    (16, 5, 5, 4, 3, 2, 1),
    (4, 4, 4, 3, 4, 1, 3),
    (11, 13, 6, 2, 3, 2, 0),
]
WINDOW_IDS = ["C{}_{}x{}x{}_k{}s{}p{}".format(*w) for w in WINDOWS]


def image_batch(C: int, W: int, H: int, N: int, seed: int, levels: int = 0) -> np.ndarray:
    """x [C, W, H, N] as numpy [N, H, W, C]; with levels, values from a few integers (ties in every window)."""
    rng = np.random.default_rng(seed)
    if levels:
        return rng.integers(0, levels, (N, H, W, C)).astype(np.float32)
    return rng.standard_normal((N, H, W, C)).astype(np.float32)


def out_side(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def im2col(x: np.ndarray, k: int, s: int, p: int, rows_out: int) -> np.ndarray:
    """[P, rows_out]: per output pixel (image, row, column), the window c fastest, then kernel column, then kernel row;
    zero outside the image and in the rows past C*k*k."""
    N, H, W, C = x.shape
    OH, OW = out_side(H, k, s, p), out_side(W, k, s, p)
    padded = np.zeros((N, H + 2 * p + k, W + 2 * p + k, C), np.float32)
    padded[:, p : p + H, p : p + W] = x
    out = np.zeros((N, OH, OW, rows_out), np.float32)
    for oy in range(OH):
        for ox in range(OW):
            window = padded[:, oy * s : oy * s + k, ox * s : ox * s + k, :]
            out[:, oy, ox, : C * k * k] = window.reshape(N, -1)
    return out.reshape(N * OH * OW, rows_out)


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
def test_im2col_copies_every_window(window, no_scratch) -> None:
    C, W, H, N, k, s, p = window
    x = image_batch(C, W, H, N, seed=k * 10 + C)
    for extra in (0, 5):
        rows_out = C * k * k + extra
        expected = im2col(x, k, s, p, rows_out)
        for threads in THREADS:
            got, _ = run(lib.GMN_TESTING_IM2COL, [k, s, p, rows_out], [dense(x)], threads)
            np.testing.assert_array_equal(
                bits(got.reshape(expected.shape)), bits(expected), err_msg=f"{threads} threads"
            )


@pytest.mark.parametrize("window", WINDOWS, ids=WINDOW_IDS)
def test_the_gathered_columns_are_im2col_s(window) -> None:
    C, W, H, N, k, s, p = window
    x = image_batch(C, W, H, N, seed=k * 10 + C + 1)
    for extra in (0, 2):
        expected = im2col(x, k, s, p, C * (k * k + extra))
        pixel = np.arange(N * H * W).reshape(N, H, W, 1).astype(np.float32)  # each pixel's row; W*H*N: the zero row
        picked = im2col(pixel + 1, k, s, p, k * k + extra).astype(np.int64) - 1
        picked[picked < 0] = N * H * W
        for threads in THREADS:
            got, taken = run(lib.GMN_TESTING_GATHER_COLS, [k, s, p, extra], [dense(x)], threads)
            assert taken.get("get_rows") == 1 and taken.get("acc", 0) == (1 if p or extra else 0), taken
            np.testing.assert_array_equal(bits(got.reshape(expected.shape)), bits(expected))
            idx, _ = run(lib.GMN_TESTING_IM2COL_ROWS, [k, s, p, extra], [dense(x)], threads)
            np.testing.assert_array_equal(idx.reshape(picked.shape), picked)


POOLS = [  # C, W, H, N, window, stride, padding (at most half the window)
    (1, 6, 6, 2, 2, 2, 0),
    (3, 7, 5, 2, 3, 2, 1),
    (8, 8, 8, 3, 2, 2, 1),
    (11, 9, 7, 2, 3, 1, 1),
    (16, 5, 6, 2, 4, 3, 2),
    (24, 4, 4, 1, 2, 1, 0),
    (5, 10, 3, 2, 3, 3, 0),
]
POOL_IDS = ["C{}_{}x{}x{}_k{}s{}p{}".format(*w) for w in POOLS]


def pool_windows(x: np.ndarray, k: int, s: int, p: int):
    """Yields (n, oy, ox, window positions in (row, column) order inside the image)."""
    N, H, W, _ = x.shape
    for n in range(N):
        for oy in range(out_side(H, k, s, p)):
            for ox in range(out_side(W, k, s, p)):
                ys = [y for y in range(oy * s - p, oy * s - p + k) if 0 <= y < H]
                xs = [c for c in range(ox * s - p, ox * s - p + k) if 0 <= c < W]
                yield n, oy, ox, [(y, c) for y in ys for c in xs]


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_max_pooling_picks_the_first_largest_inside_the_image(pool) -> None:
    C, W, H, N, k, s, p = pool
    x = image_batch(C, W, H, N, seed=C + k, levels=3)  # ties everywhere: the first of them must win
    OH, OW = out_side(H, k, s, p), out_side(W, k, s, p)
    values = np.zeros((N, OH, OW, C), np.float32)
    picks = np.zeros((N, OH, OW, C), np.int64)
    for n, oy, ox, cells in pool_windows(x, k, s, p):
        for c in range(C):
            seen = [x[n, y, xx, c] for y, xx in cells]
            first = int(np.argmax(seen))  # numpy's argmax: the first largest
            y, xx = cells[first]
            values[n, oy, ox, c] = seen[first]
            picks[n, oy, ox, c] = ((n * H + y) * W + xx) * C + c
    for threads in THREADS:
        got, _ = run(lib.GMN_TESTING_MAXPOOL, [k, s, p], [dense(x)], threads)
        np.testing.assert_array_equal(bits(got.reshape(values.shape)), bits(values))
        idx, _ = run(lib.GMN_TESTING_POOL_ARGMAX, [k, s, p], [dense(x)], threads)
        np.testing.assert_array_equal(idx.reshape(picks.shape), picks)


@pytest.mark.parametrize("C, k, outputs", [(1, 1, 1), (3, 2, 3), (6, 2, 8), (16, 3, 16), (5, 5, 9)])
def test_the_averaging_matrix(C: int, k: int, outputs: int) -> None:
    expected = np.zeros((outputs, C * k * k), np.float32)
    for c in range(C):
        expected[c, c::C] = np.float32(C) / np.float32(C * k * k)
    for threads in THREADS:
        got, _ = run(lib.GMN_TESTING_AVG_MATRIX, [C, k, outputs], [], threads)
        np.testing.assert_array_equal(bits(got.reshape(expected.shape)), bits(expected))


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_average_pooling_counts_the_padding(pool) -> None:
    C, W, H, N, k, s, p = pool
    x = image_batch(C, W, H, N, seed=2 * C + k)
    OH, OW = out_side(H, k, s, p), out_side(W, k, s, p)
    expected = np.zeros((N, OH, OW, C), np.float64)
    for n, oy, ox, cells in pool_windows(x, k, s, p):
        expected[n, oy, ox] = sum(x[n, y, xx].astype(np.float64) for y, xx in cells) / (k * k)
    for gathered in (0, 1):
        for outputs in (C, C + 3):
            got, _ = run(lib.GMN_TESTING_AVGPOOL, [k, s, p, gathered, outputs], [dense(x)], 2)
            np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("to_cf", [0, 1])
def test_relayout_moves_the_channels(to_cf: int) -> None:
    rng = np.random.default_rng(to_cf)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)  # numpy [N, ., ., .] of either layout
    expected = x.transpose(0, 3, 1, 2) if to_cf else x.transpose(0, 2, 3, 1)
    for threads in THREADS:
        got, taken = run(lib.GMN_TESTING_RELAYOUT, [to_cf], [dense(x)], threads)
        assert taken == {"get_rows": 1}
        np.testing.assert_array_equal(bits(got.reshape(expected.shape)), bits(expected))


ACT_INPUTS = np.array(
    [0.0, 1e-6, -1e-6, 1e-3, -0.02, 0.3, -0.7, 1.0, 2.5, -3.3, 5.0, 8.9, -9.2, 10.5, -10.5, 14.0, -30.0, 60.0]
    + list(np.linspace(-6, 6, 101)),
    np.float32,
)


def gelu_tanh(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3)))


def gelu_tanh_derivative(z: np.ndarray) -> np.ndarray:
    k = np.sqrt(2.0 / np.pi)
    t = np.tanh(k * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * z * z)


@pytest.mark.parametrize("kind", ["tanh", "gelu"])
def test_the_linearised_activations(kind: str) -> None:
    """d = f'(x) and c = f(x) - x*d, with x*d rounded on its own: x*d + c is f(x) to a rounding."""
    x = ACT_INPUTS
    z = x.astype(np.float64)
    f, df = (np.tanh(z), 1.0 - np.tanh(z) ** 2) if kind == "tanh" else (gelu_tanh(z), gelu_tanh_derivative(z))
    code = lib.GMN_LAYER_TANH if kind == "tanh" else lib.GMN_LAYER_GELU
    for threads in THREADS:
        got, _ = run(lib.GMN_TESTING_ACT_VALUES, [code], [dense(x)], threads)
        d, c = got.reshape(2, x.size)
        np.testing.assert_allclose(d, df, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose((x * d).astype(np.float32) + c, f, rtol=1e-5, atol=2e-6)


# ---- refusals ----------------------------------------------------------------------------------------------------
def test_operands_that_do_not_fit_are_refused_without_a_crash() -> None:
    rng = np.random.default_rng(0)
    a, b = rows(rng, 4, 5), rows(rng, 3, 6)
    bad_index = dense(np.array([0, 7], np.int32))
    x = dense(image_batch(2, 3, 3, 1, seed=0))
    cases = [
        (lib.GMN_TESTING_OUT_PROD, [], [a, b]),  # J differs
        (lib.GMN_TESTING_MUL_MAT, [], [a, b]),  # K differs
        (lib.GMN_TESTING_GET_ROWS, [], [a, bad_index]),  # row 7 of 5
        (lib.GMN_TESTING_GET_ROWS_BACK, [3], [rows(rng, 4, 2), bad_index]),
        (lib.GMN_TESTING_IM2COL, [5, 1, 0, 50], [x]),  # a window larger than the image
        (lib.GMN_TESTING_MAXPOOL, [3, 1, 2], [x]),  # padding over half the window
        (lib.GMN_TESTING_ACC, [2, 0], [dense(np.zeros(4, np.float32)), dense(np.zeros((2, 3), np.float32))]),
        (lib.GMN_TESTING_REPEAT, [3], [dense(np.zeros((2, 3), np.float32))]),  # 3 rows from blocks of 2
        (lib.GMN_TESTING_REPEAT, [0], [dense(np.zeros(3, np.float32))]),  # no rows
        (999, [], []),
        (lib.GMN_TESTING_OUT_PROD, [], [Operand(np.zeros(4, np.float32), (4, 2), (1, 4)), b]),  # past its buffer
    ]
    for op, params, operands in cases:
        arrays = ffi.new("struct gmn_testing_array[]", max(len(operands), 1))
        for arr, o in zip(arrays, operands):
            arr.i32, arr.ne, arr.nb = int(o.buffer.dtype == np.int32), list(o.ne), list(o.nb)
            arr.data, arr.n = ffi.cast("void *", ffi.from_buffer(o.buffer)), o.buffer.size
        room = np.zeros(1024, np.float32)
        out = ffi.new("struct gmn_testing_array *")
        out.data, out.n = ffi.cast("void *", ffi.from_buffer(room)), room.size
        p = ffi.new("int64_t[]", params or [0])
        status = lib.gmn_testing_cpu_op(op, p, len(params), arrays, len(operands), 1, 1, out, ffi.NULL)
        assert status == lib.GMN_E_INVALID, (op, params)
        assert "testing:" in ffi.string(lib.gmn_last_error()).decode()
