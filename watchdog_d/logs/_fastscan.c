/* One pass over a block of log lines for many literals at once.
 *
 * first_hits(data, literals) -> ({line_start: first_hit}, newlines)
 *
 * For every line of ``data`` that contains any of ``literals``: the offset of the
 * line's start and of the earliest literal occurrence in it; and the number of
 * newlines in ``data`` (the reader's line count). The same answer as bytes.find
 * for each literal plus bytes.count(b"\n"), without a pass per literal (the
 * agent's log scan is bound by this prefilter). Optional: fingerprints.py falls
 * back to pure Python when it was not built.
 *
 * How. A literal of 4 or more bytes holds S = min(len) - 1 byte pairs at
 * consecutive offsets (its "window", chosen among pairs rare in the block).
 * Testing the pair at every S-th position against a 64 Ki-bit table of window
 * pairs cannot miss an occurrence, and most positions of normal log text are
 * rejected by that one lookup; where the table says yes, the literals owning the
 * pair are compared for real. Shorter literals ("SIG", "Xid") would force S = 2:
 * each is found instead by memchr on its byte rarest in the block.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_LITS 64
#define MAX_STEP 4
#define SHORT 4          /* literals shorter than this take the memchr path */
#define SAMPLE 8192      /* bytes looked at to learn what is rare in the block */

typedef struct {
    const unsigned char *d;
    Py_ssize_t n;
    const unsigned char *lit[MAX_LITS];
    Py_ssize_t len[MAX_LITS];
    int nlits;
    PyObject *out;                   /* {line_start: first_hit} */
} Scan;

/* Letter pairs frequent in English and in log text; a space or digit next to
 * anything counts as frequent too. A tie-break after what the sample shows. */
static const char FREQUENT[] =
    "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io "
    "le ve co me de hi ri ro ic ne ea ra ce li ch ll be ma si om ur";

static int frequent_pair(unsigned char a, unsigned char b) {
    if (a == ' ' || b == ' ' || (a >= '0' && a <= '9') || (b >= '0' && b <= '9'))
        return 1;
    for (const char *f = FREQUENT; f[0] && f[1]; f += 3)
        if ((unsigned char)f[0] == a && (unsigned char)f[1] == b)
            return 1;
    return 0;
}

/* newlines in d[0:n], eight bytes at a time (no popcount instruction needed) */
static Py_ssize_t count_newlines(const unsigned char *d, Py_ssize_t n) {
    const uint64_t ones = 0x0101010101010101ULL, lows = 0x7f7f7f7f7f7f7f7fULL;
    const uint64_t m8 = 0x00ff00ff00ff00ffULL;
    Py_ssize_t count = 0, i = 0;
    while (i + 8 <= n) {
        uint64_t sums = 0;                            /* per byte lane, < 256 */
        for (int r = 0; r < 255 && i + 8 <= n; r++, i += 8) {
            uint64_t w;
            memcpy(&w, d + i, 8);
            uint64_t x = w ^ (ones * '\n');           /* a newline byte becomes 0 */
            uint64_t t = ((x & lows) + lows) | x;     /* high bit clear only for 0 bytes */
            sums += (~t & ~lows) >> 7;                /* 1 in the lane of each newline */
        }
        uint64_t pairs16 = (sums & m8) + ((sums >> 8) & m8);    /* 4 lanes of 16 bits */
        count += (Py_ssize_t)((pairs16 * 0x0001000100010001ULL) >> 48);
    }
    for (; i < n; i++)
        count += d[i] == '\n';
    return count;
}

/* The line holding `hit` (its start found backwards, not before `floor`) has an
 * occurrence at `hit`: keep the earliest. 0 ok, -1 Python error. */
static int record(Scan *s, Py_ssize_t floor, Py_ssize_t hit) {
    Py_ssize_t line = hit;
    while (line > floor && s->d[line - 1] != '\n')
        line--;
    PyObject *key = PyLong_FromSsize_t(line);
    if (key == NULL)
        return -1;
    PyObject *old = PyDict_GetItemWithError(s->out, key);
    if (old == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    int rc = 0;
    if (old == NULL || PyLong_AsSsize_t(old) > hit) {
        PyObject *val = PyLong_FromSsize_t(hit);
        rc = val == NULL || PyDict_SetItem(s->out, key, val) < 0 ? -1 : 0;
        Py_XDECREF(val);
    }
    Py_DECREF(key);
    return rc;
}

/* The literals of SHORT bytes or more, by the pair table. */
static int scan_pairs(Scan *s, const uint8_t *seen) {
    const unsigned char *d = s->d;
    Py_ssize_t n = s->n, minlen = PY_SSIZE_T_MAX;
    for (int k = 0; k < s->nlits; k++)
        if (s->len[k] >= SHORT && s->len[k] < minlen)
            minlen = s->len[k];
    if (minlen == PY_SSIZE_T_MAX)
        return 0;
    Py_ssize_t step = minlen - 1 < MAX_STEP ? minlen - 1 : MAX_STEP;

    /* each literal's window: the `step` consecutive pairs least likely in the text */
    uint8_t pairs[65536 / 8];        /* window pairs, one bit each: the fast reject */
    struct { unsigned char second, offset, k; } entry[MAX_LITS * MAX_STEP], sorted[MAX_LITS * MAX_STEP];
    int nentry = 0, from[257];       /* sorted[from[c] .. from[c + 1]): pairs starting with c */
    Py_ssize_t reach = 0;            /* an occurrence starts at most this far before its test */
    memset(pairs, 0, sizeof pairs);
    memset(from, 0, sizeof from);
    for (int k = 0; k < s->nlits; k++) {
        const unsigned char *l = s->lit[k];
        if (s->len[k] < SHORT)
            continue;
        Py_ssize_t best = 0, best_cost = PY_SSIZE_T_MAX;
        for (Py_ssize_t w = 0; w + step <= s->len[k] - 1; w++) {
            Py_ssize_t cost = 0;
            for (Py_ssize_t o = w; o < w + step; o++) {
                unsigned int pr = (unsigned int)l[o] << 8 | l[o + 1];
                cost += 4 * !!(seen[pr >> 3] & (1u << (pr & 7))) + frequent_pair(l[o], l[o + 1]);
            }
            if (cost < best_cost) {
                best_cost = cost;
                best = w;
            }
        }
        for (Py_ssize_t o = best; o < best + step; o++) {
            unsigned int pr = (unsigned int)l[o] << 8 | l[o + 1];
            pairs[pr >> 3] |= (uint8_t)(1u << (pr & 7));
            entry[nentry].second = l[o + 1];
            entry[nentry].offset = (unsigned char)o;
            entry[nentry].k = (unsigned char)k;
            from[l[o] + 1]++;
            nentry++;
        }
        if (best + step - 1 > reach)
            reach = best + step - 1;
    }
    for (int c = 0; c < 256; c++)
        from[c + 1] += from[c];
    int fill[256];
    memcpy(fill, from, sizeof fill);
    for (int e = 0; e < nentry; e++)
        sorted[fill[s->lit[entry[e].k][entry[e].offset]]++] = entry[e];

    Py_ssize_t floor = 0;            /* the lines before it are done */
    Py_ssize_t hit = -1;             /* the earliest occurrence found in the current line */
    Py_ssize_t until = 0;            /* with a hit: an earlier one is tested by here */
#define PAIR_AT(i) ((unsigned int)d[i] << 8 | d[(i) + 1])
#define IN_TABLE(pr) (pairs[(pr) >> 3] & (1u << ((pr) & 7)))
    Py_ssize_t p = 0;
    for (;;) {
        /* the hot loop: most tested pairs are in no window */
        while (p + 1 + 3 * step < n && !(IN_TABLE(PAIR_AT(p)) | IN_TABLE(PAIR_AT(p + step)) |
                                          IN_TABLE(PAIR_AT(p + 2 * step)) | IN_TABLE(PAIR_AT(p + 3 * step))))
            p += 4 * step;
        while (p + 1 < n && !IN_TABLE(PAIR_AT(p)))
            p += step;
        if (hit >= 0 && (p > until || p + 1 >= n)) {
            /* no earlier occurrence: record the line, go on after its end */
            if (record(s, floor, hit) < 0)
                return -1;
            const unsigned char *nl = memchr(d + hit, '\n', (size_t)(n - hit));
            if (nl == NULL)
                break;
            floor = (nl - d) + 1;
            hit = -1;
            p = floor;
            continue;
        }
        if (p + 1 >= n)
            break;
        /* the pair at p is in some window: check the literals it may belong to */
        for (int e = from[d[p]]; e < from[d[p] + 1]; e++) {
            if (sorted[e].second != d[p + 1])
                continue;
            int k = sorted[e].k;
            Py_ssize_t q = p - sorted[e].offset;
            if (q < floor || q + s->len[k] > n || (hit >= 0 && q >= hit) || d[q] != s->lit[k][0] ||
                memcmp(d + q, s->lit[k], (size_t)s->len[k]) != 0)
                continue;
            if (hit < 0)
                until = q + reach;   /* any occurrence before q is tested by then */
            hit = q;
        }
        p += step;
    }
#undef PAIR_AT
#undef IN_TABLE
    return 0;
}

/* The literals under SHORT bytes, each by memchr on its byte rarest in the sample. */
static int scan_short(Scan *s, const unsigned int *bytes_seen) {
    const unsigned char *d = s->d;
    Py_ssize_t n = s->n;
    for (int k = 0; k < s->nlits; k++) {
        const unsigned char *l = s->lit[k];
        Py_ssize_t len = s->len[k], a = 0;
        if (len >= SHORT)
            continue;
        for (Py_ssize_t i = 1; i < len; i++)
            if (bytes_seen[l[i]] < bytes_seen[l[a]])
                a = i;
        Py_ssize_t from = a;
        while (from < n) {
            const unsigned char *at = memchr(d + from, l[a], (size_t)(n - from));
            if (at == NULL)
                break;
            Py_ssize_t q = (at - d) - a;
            if (q + len > n || memcmp(d + q, l, (size_t)len) != 0) {
                from = (at - d) + 1;
                continue;
            }
            if (record(s, 0, q) < 0)
                return -1;
            /* a later one in this line is not earlier: go on after the line */
            const unsigned char *nl = memchr(d + q, '\n', (size_t)(n - q));
            if (nl == NULL)
                break;
            from = (nl - d) + 1 + a;
        }
    }
    return 0;
}

static PyObject *first_hits(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *lits;
    if (!PyArg_ParseTuple(args, "y*O!", &buf, &PyTuple_Type, &lits))
        return NULL;
    Scan s;
    s.nlits = (int)PyTuple_GET_SIZE(lits);
    if (PyTuple_GET_SIZE(lits) > MAX_LITS) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "at most 64 literals");
        return NULL;
    }
    for (int k = 0; k < s.nlits; k++) {
        PyObject *o = PyTuple_GET_ITEM(lits, k);
        if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) == 0 || PyBytes_GET_SIZE(o) > 255 ||
            memchr(PyBytes_AS_STRING(o), '\n', (size_t)PyBytes_GET_SIZE(o)) != NULL) {
            PyBuffer_Release(&buf);
            PyErr_SetString(PyExc_TypeError, "literals must be bytes of 1 to 255, without a newline");
            return NULL;
        }
        s.lit[k] = (const unsigned char *)PyBytes_AS_STRING(o);
        s.len[k] = PyBytes_GET_SIZE(o);
    }
    s.d = (const unsigned char *)buf.buf;
    s.n = buf.len;
    s.out = PyDict_New();
    if (s.out == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    /* what the text is made of: the bytes and pairs of its first SAMPLE bytes */
    uint8_t seen[65536 / 8];
    unsigned int bytes_seen[256];
    memset(seen, 0, sizeof seen);
    memset(bytes_seen, 0, sizeof bytes_seen);
    for (Py_ssize_t i = 0; i < s.n && i < SAMPLE; i++) {
        bytes_seen[s.d[i]]++;
        if (i + 1 < s.n) {
            unsigned int pr = (unsigned int)s.d[i] << 8 | s.d[i + 1];
            seen[pr >> 3] |= (uint8_t)(1u << (pr & 7));
        }
    }
    if (scan_pairs(&s, seen) < 0 || scan_short(&s, bytes_seen) < 0) {
        Py_DECREF(s.out);
        PyBuffer_Release(&buf);
        return NULL;
    }
    Py_ssize_t newlines = count_newlines(s.d, s.n);
    PyBuffer_Release(&buf);
    return Py_BuildValue("(Nn)", s.out, newlines);
}

static PyMethodDef methods[] = {
    {"first_hits", first_hits, METH_VARARGS,
     "first_hits(data, literals) -> ({line_start: first_hit}, newlines) in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
