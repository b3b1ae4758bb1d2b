/* The status a rank really exits with, written into its beacon at the very end.

Python cannot learn it: a bare ``raise SystemExit(3)`` at the top of a script passes no
Python hook, and atexit handlers are not told the code. glibc's on_exit(3) is: its handler
gets the status the process gives to exit(). ``arm(path, exit_offset, detail_offset, pid)`` maps the beacon
slot with a MAP_SHARED mapping of its own (never unmapped, so it outlives the
interpreter's finalization) and registers a handler that writes the slot's exit fields
(state EXITED, the status, the CLOCK_MONOTONIC time: the clock of time.monotonic()),
unless the rank already recorded an uncaught exception. Only in process ``pid``: a child
that fork()ed inherits the registration and must not write. Signals and _exit(2) run no
handler; the agent counts those as failures anyway.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SLOT_SIZE 512
#define STATE_EXITED 1
#define STATE_EXCEPTION 2

static char *slot = NULL;
static long exit_at = 0;          /* offset of (int32 state, int32 code, double time) */
static long detail_at = 0;        /* offset of the exit detail text (NUL-terminated) */
static pid_t owner = 0;

#ifdef __GLIBC__
static void record_status(int status, void *unused) {
    (void)unused;
    if (slot == NULL || getpid() != owner)
        return;
    int32_t state, before;
    memcpy(&state, slot + exit_at, sizeof state);
    memcpy(&before, slot + exit_at + 4, sizeof before);
    if (state == STATE_EXCEPTION && status != 0)
        return;                    /* the excepthook's record says more */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    int32_t code = status & 0xff, exited = STATE_EXITED;
    if (state != STATE_EXITED || before != code)
        slot[detail_at] = 0;       /* what was recorded earlier (a sys.exit(2) caught) is not it */
    memcpy(slot + exit_at + 4, &code, sizeof code);
    memcpy(slot + exit_at + 8, &now, sizeof now);
    memcpy(slot + exit_at, &exited, sizeof exited);
}
#endif

static PyObject *arm(PyObject *self, PyObject *args) {
    (void)self;
    const char *path;
    long offset, detail, pid;
    if (!PyArg_ParseTuple(args, "slll", &path, &offset, &detail, &pid))
        return NULL;
#ifdef __GLIBC__
    if (slot != NULL || offset < 0 || offset + 16 > SLOT_SIZE || detail < 0 || detail >= SLOT_SIZE)
        Py_RETURN_FALSE;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        Py_RETURN_FALSE;
    void *map = mmap(NULL, SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        Py_RETURN_FALSE;
    slot = (char *)map;
    exit_at = offset;
    detail_at = detail;
    owner = (pid_t)pid;
    if (on_exit(record_status, NULL) != 0) {
        slot = NULL;
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
#else
    (void)path; (void)offset; (void)detail; (void)pid;
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"arm", arm, METH_VARARGS,
     "arm(path, exit_offset, detail_offset, pid) -> bool: at exit(), write the exit status "
     "into the slot."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_exitstatus",
    "Write a rank's real exit status into its beacon at exit (glibc on_exit).", -1, methods,
};

PyMODINIT_FUNC PyInit__exitstatus(void) { return PyModule_Create(&module); }
