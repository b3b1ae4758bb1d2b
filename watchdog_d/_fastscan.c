/* One pass over a block of log lines for many literals at once.
 *
 * first_hits(data, literals) -> {line_start: first_hit}
 *
 * For every line of ``data`` that contains any of ``literals``: the offset of the
 * line's start and of the earliest literal occurrence in it. The same answer as
 * calling bytes.find for each literal, in one pass instead of one per literal
 * (the agent's log scan is bound by this prefilter). Optional: fingerprints.py
 * falls back to pure Python when this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_LITS 64

static PyObject *first_hits(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *lits;
    if (!PyArg_ParseTuple(args, "y*O!", &buf, &PyTuple_Type, &lits))
        return NULL;
    Py_ssize_t nlits = PyTuple_GET_SIZE(lits);
    if (nlits > MAX_LITS) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "too many literals");
        return NULL;
    }
    const char *lit[MAX_LITS];
    Py_ssize_t len[MAX_LITS];
    /* literals bucketed by their first byte: a byte that starts none costs one lookup */
    unsigned char first[256], second[256][256 / 8];
    int bucket[256][MAX_LITS], nbucket[256];
    memset(first, 0, sizeof first);
    memset(second, 0, sizeof second);
    memset(nbucket, 0, sizeof nbucket);
    for (Py_ssize_t k = 0; k < nlits; k++) {
        PyObject *o = PyTuple_GET_ITEM(lits, k);
        if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) == 0 ||
            memchr(PyBytes_AS_STRING(o), '\n', (size_t)PyBytes_GET_SIZE(o)) != NULL) {
            PyBuffer_Release(&buf);
            PyErr_SetString(PyExc_TypeError, "literals must be non-empty bytes without a newline");
            return NULL;
        }
        lit[k] = PyBytes_AS_STRING(o);
        len[k] = PyBytes_GET_SIZE(o);
        unsigned char c0 = (unsigned char)lit[k][0];
        unsigned char c1 = len[k] > 1 ? (unsigned char)lit[k][1] : 0;
        first[c0] = 1;
        if (len[k] > 1)
            second[c0][c1 >> 3] |= (unsigned char)(1u << (c1 & 7));
        else
            memset(second[c0], 0xff, sizeof second[c0]);
        bucket[c0][nbucket[c0]++] = (int)k;
    }
    PyObject *out = PyDict_New();
    if (out == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)buf.buf;
    Py_ssize_t n = buf.len, scanned = 0, line = 0;   /* line: start of the line of `scanned` */
    for (Py_ssize_t p = 0; p < n; p++) {
        unsigned char c = d[p];
        if (!first[c])               /* the common case: one table lookup per byte */
            continue;
        if (p + 1 < n) {   /* the byte pair must start some literal too */
            unsigned char c1 = d[p + 1];
            if (!(second[c][c1 >> 3] & (1u << (c1 & 7))))
                continue;
        }
        for (int j = 0; j < nbucket[c]; j++) {
            int k = bucket[c][j];
            if (p + len[k] <= n && memcmp(d + p, lit[k], (size_t)len[k]) == 0) {
                /* the hit's line start: the last newline between what we know and p */
                for (Py_ssize_t q = p - 1; q >= scanned; q--) {
                    if (d[q] == '\n') {
                        line = q + 1;
                        break;
                    }
                }
                PyObject *key = PyLong_FromSsize_t(line);
                PyObject *val = PyLong_FromSsize_t(p);
                int bad = key == NULL || val == NULL || PyDict_SetItem(out, key, val) < 0;
                Py_XDECREF(key);
                Py_XDECREF(val);
                if (bad) {
                    Py_DECREF(out);
                    PyBuffer_Release(&buf);
                    return NULL;
                }
                /* only the first hit of a line matters: go to its end */
                const unsigned char *nl = memchr(d + p, '\n', (size_t)(n - p));
                if (nl == NULL) {
                    p = n;
                } else {
                    p = nl - d;
                    line = p + 1;
                }
                scanned = p + 1;
                break;
            }
        }
    }
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"first_hits", first_hits, METH_VARARGS,
     "first_hits(data, literals) -> {line_start: first_hit} in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
