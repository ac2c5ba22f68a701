/* PNG row unfiltering (PNG spec, section 9), the one step of PNG decoding numpy cannot vectorise.
 *
 * The Paeth filter makes every byte depend on the byte decoded just before it, so it must run as a
 * scalar loop; Pillow, libpng, libspng and Wuffs all spend ~5 ms per 1024x1024 8-bit scan in it on
 * the benchmark machine, because they branch on every byte. The loop below selects with
 * conditional moves instead (~2.3 ms). Everything else (chunk parsing, checks, inflate) is Python
 * in service/decode/png.py; this file only turns an inflated, size-checked buffer into pixels.
 *
 * unfilter(src, dst, height, row_bytes, bpp) -> None
 *   src: height * (1 + row_bytes) bytes, each row prefixed by its filter type (0..4)
 *   dst: writable buffer of height * row_bytes bytes
 *   bpp: bytes per complete pixel (1..8)
 * Raises ValueError on inconsistent sizes or an unknown filter type; never reads or writes outside
 * the two buffers. The GIL is released while rows are unfiltered, so decode threads run in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline int absdiff(int x) { return x < 0 ? -x : x; }

static inline uint8_t paeth(int a, int b, int c)
{
    int pa = absdiff(b - c), pb = absdiff(a - c), pc = absdiff(a + b - 2 * c);
    /* Same choice as the spec's "if pa <= pb and pa <= pc: a elif pb <= pc: b else c",
       written as two selects the compiler turns into conditional moves. */
    int p = pb < pa ? b : a;
    int best = pb < pa ? pb : pa;
    return (uint8_t)(pc < best ? c : p);
}

/* Returns -1 when every row was unfiltered, else the index of the row with a bad filter type. */
static Py_ssize_t unfilter_rows(const uint8_t *src, uint8_t *dst, Py_ssize_t height, Py_ssize_t row_bytes,
                                Py_ssize_t bpp, const uint8_t *zero_row)
{
    const uint8_t *prev = zero_row;
    for (Py_ssize_t r = 0; r < height; r++) {
        const uint8_t *f = src + r * (row_bytes + 1) + 1;
        uint8_t *o = dst + r * row_bytes;
        Py_ssize_t x;
        switch (f[-1]) {
        case 0:
            memcpy(o, f, (size_t)row_bytes);
            break;
        case 1:
            for (x = 0; x < bpp; x++) o[x] = f[x];
            for (; x < row_bytes; x++) o[x] = (uint8_t)(f[x] + o[x - bpp]);
            break;
        case 2:
            for (x = 0; x < row_bytes; x++) o[x] = (uint8_t)(f[x] + prev[x]);
            break;
        case 3:
            for (x = 0; x < bpp; x++) o[x] = (uint8_t)(f[x] + (prev[x] >> 1));
            for (; x < row_bytes; x++) o[x] = (uint8_t)(f[x] + ((o[x - bpp] + prev[x]) >> 1));
            break;
        case 4:
            for (x = 0; x < bpp; x++) o[x] = (uint8_t)(f[x] + prev[x]);  /* a = c = 0: Paeth picks b */
            if (bpp == 1) {
                /* Keep the running values in registers: this is the loop that matters. */
                int a = o[0], c = prev[0];
                for (x = 1; x < row_bytes; x++) {
                    int b = prev[x];
                    a = (uint8_t)(f[x] + paeth(a, b, c));
                    o[x] = (uint8_t)a;
                    c = b;
                }
            } else {
                for (; x < row_bytes; x++) o[x] = (uint8_t)(f[x] + paeth(o[x - bpp], prev[x], prev[x - bpp]));
            }
            break;
        default:
            return r;
        }
        prev = o;
    }
    return -1;
}

static PyObject *unfilter(PyObject *module, PyObject *args)
{
    Py_buffer src, dst;
    Py_ssize_t height, row_bytes, bpp, bad_row = -1;
    uint8_t *zero_row;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*w*nnn:unfilter", &src, &dst, &height, &row_bytes, &bpp))
        return NULL;
    if (height <= 0 || row_bytes <= 0 || bpp < 1 || bpp > 8 || row_bytes % bpp != 0
        || height > PY_SSIZE_T_MAX / (row_bytes + 1)) {
        PyErr_SetString(PyExc_ValueError, "unfilter: bad image geometry");
        goto done;
    }
    if (src.len != height * (row_bytes + 1) || dst.len != height * row_bytes) {
        PyErr_SetString(PyExc_ValueError, "unfilter: buffer sizes do not match the geometry");
        goto done;
    }
    zero_row = PyMem_Calloc((size_t)row_bytes, 1);  /* the row "above" the first row */
    if (zero_row == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    bad_row = unfilter_rows((const uint8_t *)src.buf, (uint8_t *)dst.buf, height, row_bytes, bpp, zero_row);
    Py_END_ALLOW_THREADS
    PyMem_Free(zero_row);
    if (bad_row >= 0) {
        PyErr_Format(PyExc_ValueError, "unfilter: row %zd has an unknown filter type", bad_row);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"unfilter", unfilter, METH_VARARGS, "Reverse PNG row filters: unfilter(src, dst, height, row_bytes, bpp)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pngfilter", "PNG row unfiltering (see service/decode/png.py).", 0, methods,
};

PyMODINIT_FUNC PyInit__pngfilter(void) { return PyModule_Create(&module); }
