/* The load generator's fast path: walk server frames, check seq, read send times.
 *
 * A Python loop costs ~0.5 us per frame, and wschat delivers more than 2 M frames/s on
 * one core: a Python load generator would measure itself. This walks the frames of one
 * read in C and stops, leaving the frame to Python, at anything but the common case:
 *
 *   - an unmasked, final text frame (0x81), or a compressed one (0xC1) whose payload
 *     is a key of `cache` (bytes -> seq: payloads already inflated once; a dict lookup
 *     compares the bytes, so every copy is still checked against the first);
 *   - whose seq (`"seq":N` within the first 96 bytes, or the cached one) is `nxt`.
 *
 * scan(buf, pos, end, nxt, cache, want_times, record_from, stamp, now)
 *   -> (pos, count, nxt, stop, latencies, observed, compressed)
 *
 * stop: 0 = the frame at pos is incomplete (read more); 1 = the frame at pos needs the
 * Python path; 2 = the time buffers are full (call again). compressed: how many of the
 * counted frames were compressed (RSV1). With want_times, every frame's
 * send time (the 19 digits after `"message":"`) >= record_from gives a latency
 * (stamp or now) - sent and an observed time now - sent, as packed int64 bytes.
 * Compressed frames with want_times go to Python (the cache holds seqs only).
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_TIMES 4096
#define SEQ_WINDOW 96

static const char SEQ_KEY[] = "\"seq\":";
static const char MESSAGE_KEY[] = "\"message\":\"";

static int parse_int(const unsigned char *p, const unsigned char *limit, long long *out) {
    long long value = 0;
    const unsigned char *start = p;
    while (p < limit && *p >= '0' && *p <= '9') {
        value = value * 10 + (*p - '0');
        p++;
    }
    *out = value;
    return p > start;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, end;
    long long nxt, record_from, stamp, now;
    PyObject *cache;
    int want_times;
    if (!PyArg_ParseTuple(args, "y*nnLOpLLL", &view, &pos, &end, &nxt, &cache, &want_times,
                          &record_from, &stamp, &now))
        return NULL;
    const unsigned char *d = view.buf;
    if (end > view.len) end = view.len;
    long long latencies[MAX_TIMES], observed[MAX_TIMES];
    Py_ssize_t ntimes = 0, count = 0, compressed = 0;
    int stop = 0;
    long long at = stamp ? stamp : now;
    for (;;) {
        Py_ssize_t avail = end - pos;
        if (avail < 2) { stop = 0; break; }
        unsigned char b0 = d[pos], b1 = d[pos + 1];
        if (b1 & 0x80) { stop = 1; break; }
        Py_ssize_t length = b1, header = 2;
        if (length == 126) {
            if (avail < 4) { stop = 0; break; }
            length = ((Py_ssize_t)d[pos + 2] << 8) | d[pos + 3];
            header = 4;
        } else if (length == 127) {
            if (avail < 10) { stop = 0; break; }
            unsigned long long n = 0;
            for (int i = 2; i < 10; i++) n = (n << 8) | d[pos + i];
            if (n > (unsigned long long)PY_SSIZE_T_MAX / 2) { stop = 1; break; }
            length = (Py_ssize_t)n;
            header = 10;
        }
        if (length > avail - header) { stop = 0; break; }
        const unsigned char *payload = d + pos + header;
        long long seq;
        if (b0 == 0x81) {
            Py_ssize_t window = length < SEQ_WINDOW ? length : SEQ_WINDOW;
            const unsigned char *key = memmem(payload, window, SEQ_KEY, sizeof SEQ_KEY - 1);
            if (key == NULL ||
                !parse_int(key + sizeof SEQ_KEY - 1, payload + length, &seq)) {
                stop = 1; break;
            }
        } else if (b0 == 0xC1 && cache != Py_None && !want_times) {
            PyObject *k = PyBytes_FromStringAndSize((const char *)payload, length);
            if (k == NULL) goto error;
            PyObject *value = PyDict_GetItemWithError(cache, k);  /* borrowed */
            Py_DECREF(k);
            if (value == NULL) {
                if (PyErr_Occurred()) goto error;
                stop = 1; break;
            }
            seq = PyLong_AsLongLong(value);
            if (seq == -1 && PyErr_Occurred()) goto error;
            if (seq == nxt) compressed++;
        } else {
            stop = 1; break;
        }
        if (seq != nxt) { stop = 1; break; }
        if (want_times) {
            const unsigned char *m = memmem(payload, length, MESSAGE_KEY, sizeof MESSAGE_KEY - 1);
            long long sent;
            if (m != NULL && parse_int(m + sizeof MESSAGE_KEY - 1, payload + length, &sent) &&
                sent >= record_from) {
                latencies[ntimes] = at - sent;
                observed[ntimes] = now - sent;
                ntimes++;
            }
        }
        nxt++;
        count++;
        pos += header + length;
        if (ntimes == MAX_TIMES) { stop = 2; break; }
    }
    PyBuffer_Release(&view);
    PyObject *lat = PyBytes_FromStringAndSize((const char *)latencies, ntimes * 8);
    PyObject *obs = PyBytes_FromStringAndSize((const char *)observed, ntimes * 8);
    if (lat == NULL || obs == NULL) {
        Py_XDECREF(lat);
        Py_XDECREF(obs);
        return NULL;
    }
    return Py_BuildValue("nnLiNNn", pos, count, nxt, stop, lat, obs, compressed);
error:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "Walk in-order text frames; see _scan.c."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
