/* sp_fastport.c - the ports' hot methods in C (the module sslports._fastport).
 *
 * WHY
 *
 * A request/response loop spends most of its non-OpenSSL time in the Python that runs once per
 * port call, and that Python runs cold: between two waits on the network its instructions cost
 * several times what a timeit loop says (bench/README.md, "Where the time goes"). So the common
 * case of read / readinto / readinto1 / read1 / readline / peek on an input port and write /
 * flush on an output port is done here, with no Python frame at all. These C methods are the
 * port classes' own (method descriptors that hot_methods puts in place of the Python methods at
 * import: nothing per port); each finds the port's Reader / Writer (its `_fast`: the
 * connection, the direction's lock, the continuation, the kept or pending bytes) and its mode,
 * which ports.py `_sync_fast` sets as the port's state changes. ON, the common case (a socket
 * port without a timeout): the whole call here. KEPT_ONLY, a port with a timeout or over streams
 * (ports_to_ssl_ports): a read or a line that the kept bytes hold whole, a peek at them, or a
 * write that adds to the pending bytes is served here, anything else by the class's Python
 * method (the pump, deadlines and streams live in ports.py; its small reads read ahead into the
 * kept bytes). OFF, a closed port: the Python method (off_call), which raises. Bytes read ahead
 * by readline or peek are the input port's `_buf`, which the C methods serve first. The two
 * ports of an ssl_connect / ssl_accept connection are made here too, in the state their
 * __init__ gives them (make_ports, below): that runs once per connection, cold, where every
 * Python step costs several times its warm figure. (The C methods were bound per port, into
 * each port's instance dict, until a round measured what they cost an idle connection: 0.55 K
 * of each end's ~18 K; bench/README.md section 4.) For the same reason a socket
 * connection's handshake loop (handshake) and both ports' close() (close_port, a method
 * descriptor on each class, with the connection's last close) are here too: each Python frame
 * they replace cost ~3-4 us per connection. Everything else stays in Python, and every C
 * method here has a Python twin in ports.py that does the same steps (used without this
 * module, and tested on both paths).
 *
 * ONE CALL
 *
 *   1. Export the caller's buffer (a wrong type raises here, before anything else happens).
 *   2. Take the direction's lock (a Lock, below: threading.Lock's behaviour, taken here without
 *      a Python call; the Python paths and close() take the same lock with `with`).
 *   3. Read the connection's `_fast_addr` (0 once it is closed): the sp_conn to pump.
 *   4. One sp_read / sp_write2 (the pending bytes, then the caller's) with the GIL released,
 *      waiting at most one slice.
 *   5. The common outcome (all asked for was read or sent) releases the lock and returns.
 *      Any other (a slice that elapsed, EOF, an error, a closed connection, a Ctrl-C that a
 *      key logger met inside the pump call: SP_BROKE) hands the buffer and the progress made
 *      to the connection's Python continuation (`read_rest` / `write_rest`), called with the
 *      lock held: deadlines, signal handlers, EOF policy and error objects live in one place,
 *      ports.py. The lock is released here afterwards, also
 *      when the continuation raised (even at its first instruction, as Ctrl-C may); a write's
 *      continuation that raised leaves pending exactly the bytes OpenSSL did not take
 *      (continue_write), and a read's keeps the bytes the read had, to be read first
 *      (keep_read_bytes).
 *
 * The output port's pending bytes are one bytearray shared with ports.py (never rebound, only
 * changed in place, always under the write lock), so both paths see one buffer. A write of one
 * full record with nothing pending is not copied there: the connection holds it, already
 * encrypted (hold_record, sp_write_hold), and both paths ask the connection (sp_held_out)
 * before they treat the port as empty.
 *
 * The module calls the pump through function pointers that ports.py takes from the CFFI module
 * (sslports._native), so the pump is compiled and linked once, and this file needs neither the
 * shim's nor OpenSSL's headers: the connection is opaque, the error record is scratch space
 * whose size init() checks. It is built for free-threaded CPython too (FREE-THREADED CPYTHON,
 * below); only other interpreters (PyPy) run ports.py's Python methods alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>
#if PY_VERSION_HEX >= 0x030C0000
#define MEMBER_OBJECT_EX Py_T_OBJECT_EX
#else
#include <structmember.h>
#define MEMBER_OBJECT_EX T_OBJECT_EX
#endif
#ifdef _WIN32
#include <windows.h>
/* wingdi.h's printer-spooler SP_ERROR (-1) would turn the statuses' enum below into a syntax
 * error. */
#undef SP_ERROR
#else
#include <time.h>
#endif

/* FREE-THREADED CPYTHON (3.13t, 3.14t: Py_GIL_DISABLED). Under the GIL, a C function that does
 * not release it runs as one step for every other thread; without it, every thread runs at
 * once. What this file shares between threads, and how each is kept whole there:
 *   - a Lock's `locked` and `owner`, read by threads that do not hold it (the reentrancy check,
 *     locked(), close's look at a writer), and a Reader's / Writer's mode (`on`), which
 *     set_mode changes while other threads call the methods: atomic loads and stores
 *     (`locked` is stored with release after `owner`, and loaded with acquire before it, so
 *     a thread that sees it taken sees its holder's ident, never a stale one of its own; a
 *     call reads the mode once; what the others decide is settled under the lock, as with
 *     the GIL, where set_mode could also run while a call waited in the pump);
 *   - the port's `_fast`, which each call reads from its slot and holds a reference to for
 *     the call: set when the port is made, before another thread can see it, and never
 *     replaced;
 *   - the port's close claim and the connection's open-port count: one atomic dict
 *     setdefault, and a critical section on the list (a look and a change that must be one);
 *   - the classes' Python methods (off_call's) and the interned names: set at import, only
 *     read afterwards.
 * The kept and pending bytearrays are changed only under the direction's Lock, by these
 * methods and by ports.py alike, so they need nothing more. Every wait (a Lock, the pump, the
 * pump's own locks) already happens with the GIL released (detached, there), as the GIL
 * required to avoid deadlocks; without it that also keeps the collector's stop-the-world
 * pauses from waiting for a blocked thread. With the GIL, the macros below are plain reads and
 * writes, and the critical sections (3.13+) do nothing. */
#ifdef Py_GIL_DISABLED
#define LOAD_INT(p) _Py_atomic_load_int_relaxed(p)
#define STORE_INT(p, v) _Py_atomic_store_int_relaxed((p), (v))
#define LOAD_INT_ACQUIRE(p) _Py_atomic_load_int_acquire(p)
#define STORE_INT_RELEASE(p, v) _Py_atomic_store_int_release((p), (v))
#define LOAD_ULONG(p) _Py_atomic_load_ulong_relaxed(p)
#define STORE_ULONG(p, v) _Py_atomic_store_ulong_relaxed((p), (v))
#else
#define LOAD_INT(p) (*(p))
#define STORE_INT(p, v) (*(p) = (v))
#define LOAD_INT_ACQUIRE(p) (*(p))
#define STORE_INT_RELEASE(p, v) (*(p) = (v))
#define LOAD_ULONG(p) (*(p))
#define STORE_ULONG(p, v) (*(p) = (v))
#endif
#if PY_VERSION_HEX < 0x030D0000 /* (before 3.13: the GIL, always) */
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

typedef struct sp_conn sp_conn; /* opaque: csrc/sp_conn.h */
/* csrc/sp_conn.h's statuses (ports.py checks the numbers at import) */
enum { SP_OK = 0, SP_WANT_READ = 1, SP_WANT_WRITE = 2, SP_ERROR = -1 };
/* Not the pump's: a call that ran a callback into Python which kept a request to stop (Ctrl-C
 * in a key logger: sp_conn.h BREAKS) ends as if it were unfinished, so that the continuation
 * (ports.py read_rest / write_rest) raises it; bytes already moved are kept as for any
 * exception there. */
#define SP_BROKE 100

/* Room for one sp_err (csrc/sp.h: ~2 KB), aligned for any member; init() checks the size. */
#define ERR_ROOM 4096
typedef union {
    long double align_ld;
    void *align_p;
    long long align_ll;
    unsigned char bytes[ERR_ROOM];
} err_room;

typedef int (*read_fn)(sp_conn *, unsigned char *, size_t, size_t, size_t *, int, void *);
typedef int (*write2_fn)(sp_conn *, const unsigned char *, size_t, const unsigned char *, size_t,
                         size_t *, int, void *);
typedef int (*write_fn)(sp_conn *, const unsigned char *, size_t, size_t *, int, void *);
typedef int (*held_fn)(sp_conn *);
typedef unsigned long long (*written_fn)(sp_conn *);
typedef int (*flush_fn)(sp_conn *, int, void *);
typedef void (*conn_fn)(sp_conn *);
typedef int (*handshake_fn)(sp_conn *, int, void *);
typedef int (*forked_fn)(const sp_conn *);
typedef int (*in_callback_fn)(const sp_conn *);
typedef long (*unsent_fn)(sp_conn *);
typedef int (*take_break_fn)(void);
typedef void (*note_write_fn)(sp_conn *);

static read_fn pump_read;
static write2_fn pump_write2;
static write_fn pump_write_hold;
static held_fn pump_held;
static held_fn pump_held_try; /* -1: its lock is busy */
static written_fn pump_written;
static held_fn pump_broken;
static flush_fn pump_flush;
static conn_fn pump_drain_tickets;
static conn_fn pump_drop_unread;
static handshake_fn pump_handshake;
static forked_fn pump_forked;
static in_callback_fn pump_in_callback;
static unsent_fn pump_unsent;
static take_break_fn pump_take_break;
static note_write_fn pump_note_write;
static int slice_ms = 50;
#define LINGER_WAKE_US (20000LL * slice_ms) /* ports.py _LINGER_WAKE: 20 wait slices, in us */
static PyObject *zero, *shut_rdwr, *shut_wr; /* 0; socket.SHUT_RDWR, SHUT_WR */
#define READ_CHUNK 65536 /* what readline reads at a time (ports.py _READ_CHUNK) */
/* The most read1(n) returns (ports.py _READ1_MOST): "at most n", as io's returns at most its
 * buffer; a huge n would otherwise cost its whole size in memory once the read waits. */
#define READ1_MOST (1 << 20)
static Py_ssize_t record_size = 16384;
static PyObject *read_all;  /* read_all(reader, conn) -> bytes: read(-1) and read(None) */
static PyObject *str_closed; /* "closed" (interned) */
static PyObject *str_addr;  /* "_fast_addr" */
/* the connection's continuations, called with the lock held when the common case does not
 * hold: read_rest(b, fill, n) and write_rest(pending, data, sent, func) (ports.py Connection),
 * func the name a write's errors carry: "write", or "flush" for a flush's */
static PyObject *str_read_rest, *str_write_rest, *str_write, *str_flush;

/* ---- shared helpers ------------------------------------------------------------------ */

/* The connection's sp_conn, or NULL once it is closed (also when `_fast_addr` is unreadable:
 * the Python continuation then raises the proper error). */
static sp_conn *conn_of(PyObject *conn)
{
    PyObject *addr = PyObject_GetAttr(conn, str_addr);
    void *p;
    if (addr == NULL) {
        PyErr_Clear();
        return NULL;
    }
    p = PyLong_AsVoidPtr(addr);
    Py_DECREF(addr);
    if (p == NULL && PyErr_Occurred())
        PyErr_Clear();
    return (sp_conn *)p;
}

/* Is this process a child of the one that made the connection (fork)? Its copy of the TLS
 * state is the parent's: a record it sends reuses the parent's sequence number (and so the
 * AEAD nonce, with other plaintext), and the parent's own next record breaks the connection. */
static int in_a_child(PyObject *conn)
{
    sp_conn *c = conn_of(conn);
    return c != NULL && pump_forked(c) == 2;
}

/* The pump's small queries take its send_lock / ssl_lock, which a thread inside an OpenSSL
 * callback into Python (SNI, key log) can hold while it waits for the GIL: never wait for them
 * holding the GIL (sp_verify.c), or the threads deadlock. The common query (held_nogil, at
 * every small write and flush) looks first without waiting and gives up the GIL only when
 * the lock is busy; the other two run only after a failed write. */
static int held_nogil(sp_conn *c)
{
    int r = pump_held_try(c);
    if (r < 0) {
        Py_BEGIN_ALLOW_THREADS
        r = pump_held(c);
        Py_END_ALLOW_THREADS
    }
    return r;
}

static int broken_nogil(sp_conn *c)
{
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = pump_broken(c);
    Py_END_ALLOW_THREADS
    return r;
}

static unsigned long long written_nogil(sp_conn *c)
{
    unsigned long long n;
    Py_BEGIN_ALLOW_THREADS
    n = pump_written(c);
    Py_END_ALLOW_THREADS
    return n;
}

static PyObject *new_none(void) /* Py_NewRef(Py_None) before 3.10 */
{
    Py_INCREF(Py_None);
    return Py_None;
}

/* ---- Lock: the ports' direction locks ---------------------------------------------------- */

/* A lock with threading.Lock's behaviour (acquire / release / with / locked; a wait can be
 * interrupted by a signal handler's exception, Ctrl-C), which the C methods below take and
 * release without a Python call: through threading.Lock's bound methods that cost ~1.1k of the
 * ~27k instructions of a request/response round trip (acquire parses its arguments). The
 * Python paths of the ports take the same lock with `with`. */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    int locked; /* changed only by its holder (LOAD_INT / STORE_INT) */
    unsigned long owner; /* the holder's thread ident, while `locked` (LOAD_ULONG) */
    const sp_conn *conn; /* the connection whose direction it guards, or NULL (lock_wait) */
} Lock;

static PyObject *lock_type;

/* Lock(conn_addr=0): the address of the sp_conn whose direction it guards (lock_wait). */
static PyObject *lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Lock *self;
    PyObject *addr = NULL;
    void *conn = NULL;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Lock", 0, 1, &addr))
        return NULL;
    if (addr != NULL && (conn = PyLong_AsVoidPtr(addr)) == NULL && PyErr_Occurred())
        return NULL;
    self = (Lock *)PyType_GenericAlloc(type, 0);
    if (self == NULL)
        return NULL;
    self->conn = conn;
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void lock_dealloc(Lock *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->lock != NULL) {
        if (LOAD_INT(&self->locked))
            PyThread_release_lock(self->lock);
        PyThread_free_lock(self->lock);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static double now_ms(void);

/* Take the lock, waiting with the GIL released: forever (timeout_us < 0) or about timeout_us,
 * on a monotonic clock (a wait a signal interrupted goes on for what is left). Signal
 * handlers run when a signal interrupts the wait, as in threading.Lock. 1 taken, 0 timed
 * out, -1 with their exception. The holder's own thread never waits for it: a port called
 * again from inside one of its calls (a stream of its own that reads the port it feeds, a
 * key logger that reads the connection it logs) would wait for itself forever. That raises
 * RuntimeError, as io.BufferedReader's reentrant call (a timed wait still times out, as
 * threading.Lock's). So does a wait from inside an OpenSSL callback of the lock's connection
 * (a key logger writing to its connection while another thread writes): the holder's call
 * waits for the connection's ssl_lock, which this thread holds there (sp_conn.c CALLBACKS). */
static int lock_wait(Lock *self, long long timeout_us)
{
    PyLockStatus r = PyThread_acquire_lock_timed(self->lock, 0, 0);
    double deadline = timeout_us > 0 ? now_ms() + (double)timeout_us / 1e3 : 0;
    if (r != PY_LOCK_ACQUIRED && timeout_us < 0 && LOAD_INT_ACQUIRE(&self->locked)
        && LOAD_ULONG(&self->owner) == PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "reentrant call inside an SSL port: this thread is already in a call "
                        "on it (from a stream of its own or a callback)");
        return -1;
    }
    if (r != PY_LOCK_ACQUIRED && timeout_us < 0 && self->conn != NULL
        && pump_in_callback != NULL && pump_in_callback(self->conn)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "reentrant call inside an SSL port: this thread is inside a callback of "
                        "its connection, and another thread's call on the port waits for it");
        return -1;
    }
    while (r != PY_LOCK_ACQUIRED && timeout_us != 0) {
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(self->lock, timeout_us, 1);
        Py_END_ALLOW_THREADS
        if (r == PY_LOCK_INTR && Py_MakePendingCalls() < 0)
            return -1;
        if (r == PY_LOCK_FAILURE)
            return 0;
        if (r == PY_LOCK_INTR && timeout_us > 0) {
            double left_ms = deadline - now_ms();
            timeout_us = left_ms > 0 ? (long long)(left_ms * 1e3) : 0;
            if (timeout_us == 0) /* (the time is up: one last look) */
                r = PyThread_acquire_lock_timed(self->lock, 0, 0);
        }
    }
    if (r != PY_LOCK_ACQUIRED)
        return 0;
    STORE_ULONG(&self->owner, PyThread_get_thread_ident());
    STORE_INT_RELEASE(&self->locked, 1);
    return 1;
}

static int lock_take(Lock *self)
{
    return lock_wait(self, -1) < 0 ? -1 : 0;
}

static void lock_give(Lock *self)
{
    STORE_INT(&self->locked, 0);
    PyThread_release_lock(self->lock);
}

/* acquire(blocking=True, timeout=-1) -> bool, as threading.Lock's. */
static PyObject *lock_acquire(Lock *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"blocking", "timeout", NULL};
    int blocking = 1, r;
    double timeout = -1;
    long long us;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pd:acquire", names, &blocking, &timeout))
        return NULL;
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout != timeout) { /* NaN: as threading.Lock */
        PyErr_SetString(PyExc_ValueError, "Invalid value NaN (not a number)");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return NULL;
    }
    if (timeout > (double)PY_TIMEOUT_MAX / 1e6) {
        PyErr_SetString(PyExc_OverflowError, "timeout value is too large");
        return NULL;
    }
    us = !blocking ? 0 : timeout < 0 ? -1 : (long long)(timeout * 1e6);
    r = lock_wait(self, us);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *lock_enter(Lock *self, PyObject *unused)
{
    (void)unused;
    if (lock_take(self) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *lock_release(Lock *self, PyObject *unused)
{
    (void)unused;
    if (!LOAD_INT(&self->locked)) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    lock_give(self);
    Py_RETURN_NONE;
}

static PyObject *lock_exit(Lock *self, PyObject *args)
{
    (void)args;
    return lock_release(self, NULL);
}

static PyObject *lock_locked(Lock *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(LOAD_INT(&self->locked));
}

static int lock_owned(Lock *self)
{
    return LOAD_INT_ACQUIRE(&self->locked)
        && LOAD_ULONG(&self->owner) == PyThread_get_thread_ident();
}

/* _is_owned() -> bool: whether this thread holds it (threading.RLock's name). */
static PyObject *lock_is_owned(Lock *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(lock_owned(self));
}

/* _owner() -> int: the holder's thread ident, or 0 while it is free (ports.py close_shared:
 * a holder that is no thread of this process held it when the process forked). */
static PyObject *lock_owner(Lock *self, PyObject *unused)
{
    (void)unused;
    if (!LOAD_INT_ACQUIRE(&self->locked))
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLong(LOAD_ULONG(&self->owner));
}

/* release_taken(held_before): the `finally` of a `try` that takes the lock with a timeout
 * (ports.py _PortLock.release_taken): release it if this thread holds it and did not before
 * the `try`. One C call: a signal handler's exception cannot come between the look and the
 * release, as it can between two Python calls. */
static PyObject *lock_release_taken(Lock *self, PyObject *held_before)
{
    int before = PyObject_IsTrue(held_before);
    if (before < 0)
        return NULL;
    if (!before && lock_owned(self))
        lock_give(self);
    Py_RETURN_NONE;
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)lock_release, METH_NOARGS, "Release the lock."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, "Whether the lock is held."},
    {"_is_owned", (PyCFunction)lock_is_owned, METH_NOARGS, "Whether this thread holds it."},
    {"_owner", (PyCFunction)lock_owner, METH_NOARGS, "The holder's thread ident, or 0."},
    {"release_taken", (PyCFunction)lock_release_taken, METH_O,
     "release_taken(held_before): release it if this thread took it (not held before)."},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, "acquire()"},
    {"__exit__", (PyCFunction)lock_exit, METH_VARARGS, "release()"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lock_slots[] = {
    {Py_tp_doc, "The lock of one direction of a connection (like threading.Lock)."},
    {Py_tp_new, lock_new},
    {Py_tp_dealloc, lock_dealloc},
    {Py_tp_methods, lock_methods},
    {0, NULL},
};

static PyType_Spec lock_spec = {
    "sslports._fastport.Lock", sizeof(Lock), 0, Py_TPFLAGS_DEFAULT, lock_slots,
};

/* ---- the two types ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *conn; /* the ports.Connection */
    Lock *lock; /* its read_lock / write_lock */
    PyObject *pending; /* writer: the bytearray of bytes not yet sent; reader: of bytes read
                          ahead (by readline, peek, a failed read), served first. Shared with
                          ports.py (the port's _buf), changed in place only, under the lock. */
    int on; /* the port's mode (set_mode): ON, the common case holds; KEPT_ONLY, a port with
               a timeout or over streams, whose C methods serve what the kept bytes hold whole
               (a small read, a line, a peek) or add to the pending bytes, and leave the rest
               (the pump, deadlines) to the Python method; OFF, a closed port: the Python
               method does the call (off_call). LOAD_INT / STORE_INT. */
    int closing; /* writer: close() has begun (close_port sets it before its flush): a write
                    that takes the lock from now on raises ValueError, as io.BufferedWriter's
                    does; its bytes would come after the flush and never go out. LOAD_INT /
                    STORE_INT. */
} Port;

#define OFF 0
#define ON 1
#define KEPT_ONLY 2

static PyObject *reader_type, *writer_type;

static int port_init(Port *self, PyObject *conn, PyObject *lock, PyObject *pending)
{
    if ((PyObject *)Py_TYPE(lock) != lock_type) {
        PyErr_SetString(PyExc_TypeError, "lock must be a sslports._fastport.Lock");
        return -1;
    }
    Py_INCREF(conn);
    Py_INCREF(lock);
    Py_XINCREF(pending);
    Py_XSETREF(self->conn, conn);
    Py_XSETREF(self->lock, (Lock *)lock);
    Py_XSETREF(self->pending, pending);
    return 0;
}

/* Release the port's lock and return `result` (NULL: the pending exception stays). No Python
 * runs in between, so nothing can come between the work done under the lock and its release. */
static PyObject *port_unlock(Port *self, PyObject *result)
{
    lock_give(self->lock);
    return result;
}

static int port_traverse(Port *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->conn);
    Py_VISIT(self->lock);
    Py_VISIT(self->pending);
    return 0;
}

static int port_clear(Port *self)
{
    Py_CLEAR(self->conn);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->pending);
    return 0;
}

static void port_dealloc(Port *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    port_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

/* The hot methods, by number: the C methods on the port classes (hot_methods) and the classes'
 * own Python methods they stand for, saved there, which a call runs when the common case does
 * not hold (off_call). */
enum { M_READINTO, M_READINTO1, M_READ, M_READ1, M_READLINE, M_PEEK, M_WRITE, M_FLUSH, N_HOT };
static PyObject *python_method[N_HOT]; /* (set once, by hot_methods; only read afterwards) */
static PyMethodDef hot_defs[N_HOT];     /* (the C methods: below) */

/* set_mode(mode): OFF, ON or KEPT_ONLY (ports.py _sync_fast, as the port's state changes). */
static PyObject *port_set_mode(Port *self, PyObject *arg)
{
    long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred())
        return NULL;
    if (mode < OFF || mode > KEPT_ONLY) {
        PyErr_Format(PyExc_ValueError, "set_mode: no mode %ld", mode);
        return NULL;
    }
    STORE_INT(&self->on, (int)mode);
    Py_RETURN_NONE;
}

/* The mode of a port's C methods: a port without a Reader / Writer of its own is OFF. */
static int mode_of(Port *self)
{
    return self == NULL ? OFF : LOAD_INT(&self->on);
}

/* The call when the common case does not hold: the port class's own Python method `which`,
 * with the port and then `args` (at most two arguments: the C methods take at most one). */
static PyObject *off_call(PyObject *port, int which, PyObject *const *args, size_t n)
{
    PyObject *stack[3];
    size_t i;
    if (n > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zu given)",
                     hot_defs[which].ml_name, n);
        return NULL;
    }
    if (python_method[which] == NULL) {
        PyErr_SetString(PyExc_SystemError, "_fastport: hot_methods() was not called");
        return NULL;
    }
    stack[0] = port;
    for (i = 0; i < n; i++)
        stack[i + 1] = args[i];
    return PyObject_Vectorcall(python_method[which], stack, n + 1, NULL);
}

/* ---- Reader -------------------------------------------------------------------------- */

#define SMALL_READ 512 /* reads of less read ahead (ports.py _SMALL_READ, _small_buffer) */

/* Shrink the kept bytes to their first `size`: never fails. CPython reallocates a bytearray
 * shrunk below half its allocation, which can fail (leaving the bytearray as it was): it then
 * keeps the larger allocation and only the size changes, as it does itself for a shrink that
 * needs no new allocation. */
static void shrink_kept(PyObject *kept, Py_ssize_t size)
{
    if (PyByteArray_Resize(kept, size) < 0) {
        PyErr_Clear();
        Py_SET_SIZE(kept, size);
        ((PyByteArrayObject *)kept)->ob_start[size] = '\0'; /* (its trailing NUL) */
    }
}

/* One pump call (the read lock held, the GIL released) of what arrives, up to READ_CHUNK, into
 * room made at the end of the kept bytes (`have` of them; exported meanwhile: nothing can move
 * them), the room not filled dropped again: 0 with *status the pump's and *got what it read
 * (kept now), or -1 with an exception and the kept bytes as they were. */
static int pump_onto_kept(Port *self, sp_conn *c, Py_ssize_t have, int *status, size_t *got)
{
    PyObject *kept = self->pending;
    Py_buffer view;
    *got = 0;
    if (PyByteArray_Resize(kept, have + READ_CHUNK) < 0)
        return -1;
    if (PyObject_GetBuffer(kept, &view, PyBUF_WRITABLE) < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        shrink_kept(kept, have);
        PyErr_Restore(type, value, tb);
        return -1;
    }
    {
        err_room err; /* filled on failures; the connection keeps its own sticky copy */
        Py_BEGIN_ALLOW_THREADS
        *status = pump_read(c, (unsigned char *)view.buf + have, READ_CHUNK, 1, got, slice_ms,
                            &err);
        Py_END_ALLOW_THREADS
    }
    if (pump_take_break())
        *status = SP_BROKE;
    PyBuffer_Release(&view);
    shrink_kept(kept, have + (Py_ssize_t)*got); /* (the room not filled) */
    return 0;
}

/* Steps 2 to 4 of ONE CALL for a read into buf[0..len) (fill: all of it, else at least one
 * byte): -1 with an exception set and the lock not taken, or 0 with the lock taken, *status
 * the pump's status and *got what it read. A small read with nothing kept reads ahead: one
 * pump call of what arrives (up to 64 KiB) onto the kept bytes, served from there, as
 * io.BufferedReader serves from its buffer, so that the next small reads (read(1), a 4-byte
 * header) make no pump call; when that call read nothing (a wait, EOF, an error), the
 * continuation does the rest (ports.py SSLInputPort._readinto does the same steps). */
static int read_start(Port *self, unsigned char *buf, size_t len, int fill, int *status,
                      size_t *got)
{
    sp_conn *c;
    size_t kept, more = 0;
    *status = SP_ERROR;
    *got = 0;
    if (lock_take(self->lock) < 0)
        return -1;
    kept = (size_t)PyByteArray_GET_SIZE(self->pending);
    if (kept == 0 && len > 0 && len < SMALL_READ && (c = conn_of(self->conn)) != NULL) {
        if (pump_onto_kept(self, c, 0, status, &kept) < 0) {
            lock_give(self->lock);
            return -1;
        }
        /* (*got 0: the continuation waits, ends or fails; after a break it raises, and
         * what was read stays kept) */
        if (kept == 0 || *status == SP_BROKE)
            return 0;
    }
    if (kept > 0 && len > 0) { /* bytes read ahead come first */
        size_t n = kept < len ? kept : len;
        memcpy(buf, PyByteArray_AS_STRING(self->pending), n);
        if (PySequence_DelSlice(self->pending, 0, (Py_ssize_t)n) < 0) {
            lock_give(self->lock);
            return -1;
        }
        *got = n;
        if (n == len || !fill) {
            *status = SP_OK;
            return 0;
        }
    }
    c = conn_of(self->conn);
    if (c != NULL && len == 0) {
        *status = SP_OK;
    } else if (c != NULL) {
        err_room err; /* filled on failures; the connection keeps its own sticky copy */
        buf += *got;
        len -= *got;
        Py_BEGIN_ALLOW_THREADS
        *status = pump_read(c, buf, len, fill ? len : 1, &more, slice_ms, &err);
        Py_END_ALLOW_THREADS
        *got += more;
        if (pump_take_break())
            *status = SP_BROKE;
    }
    return 0;
}

/* Step 5: whether a read is over without its continuation. */
static int read_done(int status, size_t got, size_t len, int fill)
{
    return status == SP_OK && (got == len || (got > 0 && !fill));
}

/* With the lock held: data[0..n), bytes a read had read, go in front of the kept bytes, to be
 * read first. An exception set stands (also when there is no memory to keep them). */
static void keep_front(Port *self, const void *data, size_t n)
{
    PyObject *type, *value, *tb, *bytes;
    PyErr_Fetch(&type, &value, &tb);
    bytes = PyBytes_FromStringAndSize(data, (Py_ssize_t)n);
    if (bytes == NULL || PySequence_SetSlice(self->pending, 0, 0, bytes) < 0)
        PyErr_Clear();
    Py_XDECREF(bytes);
    PyErr_Restore(type, value, tb);
}

/* The continuation raised, with the first `got` bytes of b read (the kept bytes served, then
 * the pump's): unless it kept them itself (ports.py Connection.read puts what it had read in
 * front of the kept bytes, which then grew from `kept_before`), they go there now, in front.
 * An exception raised before it could, at its first instruction (a signal that came while
 * the pump waited, with the GIL released: Ctrl-C, a signal handler's exception), lost them. */
static void keep_read_bytes(Port *self, PyObject *b, size_t got, Py_ssize_t kept_before)
{
    PyObject *type, *value, *tb;
    Py_buffer view;
    if (got == 0 || PyByteArray_GET_SIZE(self->pending) != kept_before || b == self->pending)
        return;
    PyErr_Fetch(&type, &value, &tb); /* (no API call may run with an exception set) */
    if (PyObject_GetBuffer(b, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* (b's own exception: the first one stands) */
    } else {
        if ((size_t)view.len >= got)
            keep_front(self, view.buf, got);
        PyBuffer_Release(&view);
    }
    PyErr_Restore(type, value, tb);
}

/* The continuation of a read into b that read_start left unfinished, `got` bytes in: its
 * result, the lock released. */
static PyObject *read_rest(Port *self, PyObject *b, int fill, size_t got)
{
    Py_ssize_t kept = PyByteArray_GET_SIZE(self->pending);
    PyObject *n = PyLong_FromSize_t(got), *r = NULL;
    if (n != NULL) {
        r = PyObject_CallMethodObjArgs(self->conn, str_read_rest, b, fill ? Py_True : Py_False, n,
                                       NULL);
        Py_DECREF(n);
    }
    if (r == NULL)
        keep_read_bytes(self, b, got, kept);
    return port_unlock(self, r);
}

/* Replace the TypeError just raised for the argument obj of the method `name` (and a
 * BufferError too, if buffer_error) with one that names the method and says what it takes:
 * "write() argument must be a bytes-like object, not str" (API.md: the message names the
 * function; ports.py raises the same words). Any other exception is left as it is. */
static void name_type_error(const char *name, const char *takes, PyObject *obj, int buffer_error)
{
    if (PyErr_ExceptionMatches(PyExc_TypeError) ||
        (buffer_error && PyErr_ExceptionMatches(PyExc_BufferError))) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s() argument must be %s, not %.100s", name, takes,
                     Py_TYPE(obj)->tp_name);
    }
}

/* Export b for a read into it: 0, or -1 with an exception: io's TypeError for what cannot be
 * read into (read-only, not contiguous, not a buffer), as readinto's "w*" argument raises
 * (API.md: a wrong argument type is a TypeError; ports.py _check_writable, the same). */
static int writable_arg(PyObject *b, Py_buffer *view, const char *name)
{
    if (PyObject_GetBuffer(b, view, PyBUF_WRITABLE) == 0)
        return 0;
    name_type_error(name, "read-write bytes-like object", b, 1);
    return -1;
}

/* readinto (fill: the whole buffer) or readinto1 (at least one byte); see ONE CALL above. */
static PyObject *read_into(Port *self, PyObject *b, int fill)
{
    Py_buffer view;
    PyObject *r;
    size_t got;
    int status;

    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed SSL port");
        return NULL;
    }
    if (writable_arg(b, &view, fill ? "readinto" : "readinto1") < 0)
        return NULL;
    if (read_start(self, view.buf, (size_t)view.len, fill, &status, &got) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (read_done(status, got, (size_t)view.len, fill)) {
        PyBuffer_Release(&view);
        return port_unlock(self, PyLong_FromSize_t(got));
    }
    /* b stays exported until the continuation returns: what it already holds cannot be cut
     * off by a resize (a signal handler's, another thread's) while Python code runs, as the
     * Python method holds b for the whole call. */
    r = read_rest(self, b, fill, got);
    PyBuffer_Release(&view);
    return r;
}

/* KEPT_ONLY: readinto / readinto1 served from the kept bytes when they hold all of b (fill)
 * or any of it; else (or for a buffer the Python method refuses its own way) that method. The
 * Python twin: ports.py SSLInputPort._readinto, whose first step with kept bytes is this. */
static PyObject *kept_into(Port *self, PyObject *port, PyObject *b, int fill, int which)
{
    Py_buffer view;
    Py_ssize_t kept, n;
    if (self->conn == NULL || PyObject_GetBuffer(b, &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear(); /* (the Python method raises what it raises for it) */
        return off_call(port, which, &b, 1);
    }
    if (lock_take(self->lock) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    kept = PyByteArray_GET_SIZE(self->pending);
    if (view.len == 0 || kept == 0 || (fill && kept < view.len)) {
        lock_give(self->lock);
        PyBuffer_Release(&view);
        return off_call(port, which, &b, 1);
    }
    n = kept < view.len ? kept : view.len;
    memcpy(view.buf, PyByteArray_AS_STRING(self->pending), (size_t)n);
    PyBuffer_Release(&view);
    if (PySequence_DelSlice(self->pending, 0, n) < 0)
        return port_unlock(self, NULL);
    return port_unlock(self, PyLong_FromSsize_t(n));
}

static PyObject *reader_readinto(Port *self, PyObject *port, PyObject *b)
{
    int on = mode_of(self); /* (read once: set_mode may change it) */
    if (on == KEPT_ONLY)
        return kept_into(self, port, b, 1, M_READINTO);
    return on ? read_into(self, b, 1) : off_call(port, M_READINTO, &b, 1);
}

static PyObject *reader_readinto1(Port *self, PyObject *port, PyObject *b)
{
    int on = mode_of(self); /* (read once: set_mode may change it) */
    if (on == KEPT_ONLY)
        return kept_into(self, port, b, 0, M_READINTO1);
    return on ? read_into(self, b, 0) : off_call(port, M_READINTO1, &b, 1);
}

/* A size argument (None: -1) of the method `name` into *size: 0, or -1 with an exception: a
 * TypeError naming the method for what is not an int (API.md: the message names the function;
 * ports.py _size_arg, the same), an OverflowError for an int too large. */
static int size_arg(PyObject *obj, Py_ssize_t *size, const char *name)
{
    *size = obj == Py_None ? -1 : PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (*size != -1 || !PyErr_Occurred())
        return 0;
    name_type_error(name, "an int or None", obj, 0);
    return -1;
}

/* The method name a PyArg_ParseTuple format ends with ("|O:read": "read"). */
static const char *format_name(const char *format)
{
    const char *colon = strchr(format, ':');
    return colon != NULL ? colon + 1 : "read";
}

/* read(size) / read1(size): a fresh bytes object of what arrived, read straight into it (one
 * allocation, no copy). A read that needs its continuation (a wait, EOF, an error) goes on in
 * a bytearray, as readinto's does. */
static PyObject *read_bytes(Port *self, PyObject *port, PyObject *args, int fill,
                            const char *format)
{
    PyObject *size_obj = Py_None, *out, *buf, *got_obj;
    unsigned char *data;
    Py_ssize_t size;
    size_t got;
    int status;
    if (!PyArg_ParseTuple(args, format, &size_obj) ||
        size_arg(size_obj, &size, format_name(format)) < 0)
        return NULL;
    if (size < 0) {
        if (fill && size != -1) { /* (io.BufferedReader's words; ports.py read, the same) */
            PyErr_SetString(PyExc_ValueError, "read length must be non-negative or -1");
            return NULL;
        }
        if (fill)
            return PyObject_CallFunctionObjArgs(read_all, port, self->conn, NULL);
        size = 65536;
    }
    if (!fill && size > READ1_MOST)
        size = READ1_MOST;
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed SSL port");
        return NULL;
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    data = (unsigned char *)PyBytes_AS_STRING(out);
    if (read_start(self, data, (size_t)size, fill, &status, &got) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    if (read_done(status, got, (size_t)size, fill)) {
        port_unlock(self, NULL);
        /* Shrinking in place; should even that fail, the bytes read are lost with the object
         * (a MemoryError, as when a bytes object of that size cannot be made). */
        if ((Py_ssize_t)got < size && _PyBytes_Resize(&out, (Py_ssize_t)got) < 0)
            return NULL;
        return out;
    }
    /* (the lock is held: the bytes read so far move to the continuation's buffer; without
     * memory for it, to the kept bytes) */
    buf = PyByteArray_FromStringAndSize(NULL, size); /* (untouched beyond what came) */
    if (buf != NULL)
        memcpy(PyByteArray_AS_STRING(buf), PyBytes_AS_STRING(out), got);
    if (buf == NULL) {
        if (got > 0)
            keep_front(self, PyBytes_AS_STRING(out), got);
        Py_DECREF(out);
        return port_unlock(self, NULL);
    }
    Py_DECREF(out);
    got_obj = read_rest(self, buf, fill, got);
    if (got_obj == NULL) {
        Py_DECREF(buf);
        return NULL;
    }
    size = PyLong_AsSsize_t(got_obj);
    Py_DECREF(got_obj);
    out = size < 0 ? NULL : PyBytes_FromStringAndSize(PyByteArray_AsString(buf), size);
    Py_DECREF(buf);
    return out;
}

/* KEPT_ONLY: read(size) / read1(size) served from the kept bytes when they hold all of size
 * (read) or any (read1); else the Python method (ports.py SSLInputPort.read / read1). */
static PyObject *kept_bytes(Port *self, PyObject *port, PyObject *args, int fill,
                            const char *format, int which)
{
    PyObject *size_obj = Py_None, *out;
    Py_ssize_t size, kept;
    if (!PyArg_ParseTuple(args, format, &size_obj) ||
        size_arg(size_obj, &size, format_name(format)) < 0)
        return NULL;
    if (size < 0 && !fill)
        size = 65536; /* (read1(-1): ports.py _READ_CHUNK) */
    if (!fill && size > READ1_MOST)
        size = READ1_MOST;
    if (size <= 0 || self->conn == NULL)
        goto python;
    if (lock_take(self->lock) < 0)
        return NULL;
    kept = PyByteArray_GET_SIZE(self->pending);
    if (kept == 0 || (fill && kept < size)) {
        lock_give(self->lock);
        goto python;
    }
    out = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self->pending),
                                    kept < size ? kept : size);
    if (out != NULL && PySequence_DelSlice(self->pending, 0, PyBytes_GET_SIZE(out)) < 0)
        Py_CLEAR(out);
    return port_unlock(self, out);
python:
    return off_call(port, which, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args));
}

static PyObject *reader_read(Port *self, PyObject *port, PyObject *args)
{
    int on = mode_of(self); /* (read once: set_mode may change it) */
    if (on == KEPT_ONLY)
        return kept_bytes(self, port, args, 1, "|O:read", M_READ);
    if (!on)
        return off_call(port, M_READ, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args));
    return read_bytes(self, port, args, 1, "|O:read");
}

static PyObject *reader_read1(Port *self, PyObject *port, PyObject *args)
{
    int on = mode_of(self); /* (read once: set_mode may change it) */
    if (on == KEPT_ONLY)
        return kept_bytes(self, port, args, 0, "|O:read1", M_READ1);
    if (!on)
        return off_call(port, M_READ1, &PyTuple_GET_ITEM(args, 0), (size_t)PyTuple_GET_SIZE(args));
    return read_bytes(self, port, args, 0, "|O:read1");
}

/* A failed read of readline's (fill_kept) put what it had read in front of the kept bytes
 * (ports.py Connection.read_rest), which held `have` bytes (the line so far): move those bytes
 * after them, where they belong (ports.py's readline has its reads put them there:
 * Connection.read's `onto`). 0, or -1 with an exception (a MemoryError: then nothing moved). */
static int after_kept(PyObject *kept, Py_ssize_t have)
{
    Py_ssize_t now = PyByteArray_GET_SIZE(kept), extra = now - have;
    PyObject *got;
    int rc = 0;
    if (extra <= 0)
        return 0;
    got = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(kept), extra);
    if (got == NULL)
        return -1;
    /* (appended first: should that fail, nothing moved; a deletion at the front only moves
     * the start) */
    if (PySequence_SetSlice(kept, now, now, got) < 0 || PySequence_DelSlice(kept, 0, extra) < 0)
        rc = -1;
    Py_DECREF(got);
    return rc;
}

/* One read of what arrives onto the end of the kept bytes (the read lock held): 1 (more is
 * kept), 0 (EOF), or -1 with an exception and the kept bytes as they were. The common case is
 * one pump call with the GIL released, into room made at the end of the kept bytes (exported
 * meanwhile: nothing can move them). Anything else (a wait past one slice, EOF, an error, a
 * closed connection) is the connection's continuation, reading into a bytearray of its own,
 * appended to the kept bytes (the line so far stays where it is: a long line that arrives
 * slowly is not copied again at every wait); a failed read puts what it had read in front of
 * them, and after_kept moves it after them (see ports.py SSLInputPort.readline). */
static int fill_kept(Port *self)
{
    PyObject *kept = self->pending, *more, *n_obj;
    Py_ssize_t have = PyByteArray_GET_SIZE(kept), n;
    sp_conn *c = conn_of(self->conn);
    if (c != NULL) {
        size_t got;
        int status;
        if (pump_onto_kept(self, c, have, &status, &got) < 0)
            return -1;
        if (status == SP_OK && got > 0)
            return 1;
        have += (Py_ssize_t)got;
    }
    more = PyByteArray_FromStringAndSize(NULL, READ_CHUNK);
    if (more == NULL)
        return -1;
    n_obj = PyObject_CallMethodObjArgs(self->conn, str_read_rest, more, Py_False, zero, NULL);
    n = n_obj == NULL ? -1 : PyLong_AsSsize_t(n_obj);
    Py_XDECREF(n_obj);
    if (n < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb); /* (the read's exception is the one to raise) */
        if (after_kept(kept, have) < 0)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    } else if (n > 0) {
        if (n > PyByteArray_GET_SIZE(more) || PyByteArray_Resize(kept, have + n) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_SystemError, "readline: read more than asked");
            n = -1; /* (a MemoryError) */
        } else {
            memcpy(PyByteArray_AS_STRING(kept) + have, PyByteArray_AS_STRING(more), (size_t)n);
        }
    }
    Py_DECREF(more);
    return n < 0 ? -1 : n > 0;
}

/* readline(size=-1): the kept bytes up to and including the first newline, reading more into
 * them (fill_kept) until there is one, `size` bytes are kept, or EOF. The same steps as
 * ports.py SSLInputPort.readline (the Python twin). */
static PyObject *readline_locked(Port *self, Py_ssize_t limit)
{
    PyObject *kept = self->pending, *line;
    Py_ssize_t have, stop, scanned = 0, end;
    for (;;) {
        const char *p = PyByteArray_AsString(kept), *nl = NULL; /* (a call: never NULL here) */
        int r;
        have = PyByteArray_GET_SIZE(kept);
        stop = limit < 0 || have < limit ? have : limit;
        if (stop > scanned)
            nl = memchr(p + scanned, '\n', (size_t)(stop - scanned));
        if (nl != NULL) {
            end = nl - p + 1;
            break;
        }
        if (stop == limit) {
            end = stop;
            break;
        }
        scanned = stop;
        if ((r = fill_kept(self)) < 0)
            return NULL;
        if (r == 0) { /* EOF: the last line has no newline */
            end = PyByteArray_GET_SIZE(kept);
            break;
        }
    }
    line = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(kept), end);
    if (line != NULL && PySequence_DelSlice(kept, 0, end) < 0)
        Py_CLEAR(line);
    return line;
}

static PyObject *reader_readline(Port *self, PyObject *port, PyObject *const *args,
                                 Py_ssize_t nargs)
{
    Py_ssize_t limit = -1;
    int on = mode_of(self); /* (read once: set_mode may change it) */
    if (!on)
        return off_call(port, M_READLINE, args, (size_t)nargs);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "readline() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (nargs == 1 && size_arg(args[0], &limit, "readline") < 0)
        return NULL;
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed SSL port");
        return NULL;
    }
    if (limit == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (lock_take(self->lock) < 0)
        return NULL;
    if (on == KEPT_ONLY) { /* a line the kept bytes hold whole; else the Python method */
        PyObject *kept = self->pending, *line;
        const char *p = PyByteArray_AS_STRING(kept), *nl = NULL;
        Py_ssize_t have = PyByteArray_GET_SIZE(kept), end;
        Py_ssize_t stop = limit < 0 || have < limit ? have : limit;
        if (stop > 0)
            nl = memchr(p, '\n', (size_t)stop);
        if (nl == NULL && stop != limit) {
            lock_give(self->lock);
            return off_call(port, M_READLINE, args, (size_t)nargs);
        }
        end = nl != NULL ? nl - p + 1 : stop;
        line = PyBytes_FromStringAndSize(p, end);
        if (line != NULL && PySequence_DelSlice(kept, 0, end) < 0)
            Py_CLEAR(line);
        return port_unlock(self, line);
    }
    return port_unlock(self, readline_locked(self, limit));
}

/* peek(size=0): the kept bytes, not taken (at least one, unless at EOF; at most size or
 * PEEK_MAX, whichever is more, as io.BufferedReader gives at most its buffer); with none kept,
 * one read of what arrives onto them (fill_kept: up to 64 KiB, its continuation for a wait,
 * EOF, an error or a signal, as readline's). KEPT_ONLY: the kept bytes when there are any,
 * else the Python method (deadlines, streams). The same steps as ports.py SSLInputPort.peek
 * (the Python twin). */
#define PEEK_MAX 8192 /* ports.py _PEEK_MAX */
static PyObject *reader_peek(Port *self, PyObject *port, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size = 0, kept;
    int on = mode_of(self); /* (read once: set_mode may change it) */
    if (!on)
        return off_call(port, M_PEEK, args, (size_t)nargs);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "peek() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    /* (an int: None or a float is a TypeError, as in the Python method and io's) */
    if (nargs == 1 && (size = PyNumber_AsSsize_t(args[0], PyExc_OverflowError)) == -1 &&
        PyErr_Occurred()) {
        name_type_error("peek", "an int", args[0], 0);
        return NULL;
    }
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed SSL port");
        return NULL;
    }
    if (lock_take(self->lock) < 0)
        return NULL;
    kept = PyByteArray_GET_SIZE(self->pending);
    if (kept == 0 && on == KEPT_ONLY) {
        lock_give(self->lock);
        return off_call(port, M_PEEK, args, (size_t)nargs);
    }
    if (kept == 0) {
        int r = fill_kept(self);
        if (r < 0)
            return port_unlock(self, NULL);
        kept = PyByteArray_GET_SIZE(self->pending);
    }
    if (size < PEEK_MAX)
        size = PEEK_MAX;
    return port_unlock(self, PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self->pending),
                                                       kept < size ? kept : size));
}

static PyObject *port_get_mode(Port *self, void *unused)
{
    (void)unused;
    return PyLong_FromLong(LOAD_INT(&self->on));
}

static PyGetSetDef fast_getset[] = {
    {"mode", (getter)port_get_mode, NULL, "The port's mode (set_mode).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef fast_methods[] = { /* (a Reader's and a Writer's) */
    {"set_mode", (PyCFunction)port_set_mode, METH_O,
     "set_mode(mode): 1, the common case; 2, serve only what is kept; 0, the port is closed."},
    {NULL, NULL, 0, NULL},
};

/* port_init, then the mode (a Reader's or Writer's constructor): 0, or -1 with an exception. */
static int port_init_mode(Port *self, PyObject *conn, PyObject *lock, PyObject *buf, int mode)
{
    if (!PyByteArray_Check(buf)) {
        PyErr_SetString(PyExc_TypeError, "the port's buffer must be a bytearray");
        return -1;
    }
    if (mode < OFF || mode > KEPT_ONLY) {
        PyErr_Format(PyExc_ValueError, "no mode %d", mode);
        return -1;
    }
    if (port_init(self, conn, lock, buf) < 0)
        return -1;
    STORE_INT(&self->on, mode);
    return 0;
}

/* Reader(conn, lock, kept, mode=1): the state of an SSLInputPort's C methods. */
static int reader_init(Port *self, PyObject *args, PyObject *kwds)
{
    PyObject *conn, *lock, *kept;
    int mode = ON;
    static char *names[] = {"conn", "lock", "kept", "mode", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|i:Reader", names, &conn, &lock, &kept, &mode))
        return -1;
    return port_init_mode(self, conn, lock, kept, mode);
}

static PyType_Slot reader_slots[] = {
    {Py_tp_doc, "The state of an SSLInputPort's C methods (its _fast)."},
    {Py_tp_init, reader_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, port_dealloc},
    {Py_tp_traverse, port_traverse},
    {Py_tp_clear, port_clear},
    {Py_tp_methods, fast_methods},
    {Py_tp_getset, fast_getset},
    {0, NULL},
};

static PyType_Spec reader_spec = {
    "sslports._fastport.Reader", sizeof(Port), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, reader_slots,
};

/* ---- Writer -------------------------------------------------------------------------- */

/* The write's continuation: rest(pending, data, sent, func) (ports.py Connection.write_rest):
 * the held bytes, then `data` (NULL: nothing more), after the first `sent` bytes of the two;
 * `func` (str_write or str_flush) names the call in its errors. */
static PyObject *call_rest(Port *self, PyObject *data, size_t sent, PyObject *func)
{
    PyObject *n = PyLong_FromSize_t(sent), *empty = NULL, *r = NULL;
    if (n != NULL && data == NULL)
        data = empty = PyBytes_FromStringAndSize(NULL, 0);
    if (n != NULL && data != NULL)
        r = PyObject_CallMethodObjArgs(self->conn, str_write_rest, self->pending, data, n, func,
                                       NULL);
    Py_XDECREF(n);
    Py_XDECREF(empty);
    return r;
}

/* Release the write lock after `r` (a new reference, or NULL with an exception set): 0, or -1
 * with the exception. */
static int unlock_with(Port *self, PyObject *r)
{
    r = port_unlock(self, r);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One sp_write2 of head, then data (hold: one sp_write_hold of data), with the GIL released
 * (the write lock held). A closed connection (c NULL) is SP_ERROR with nothing done: the
 * continuation raises. */
static int pump_out(sp_conn *c, const char *head, size_t head_len, const char *data, size_t len,
                    size_t *done, int hold)
{
    int status = SP_ERROR;
    *done = 0;
    if (c != NULL) {
        err_room err; /* filled on failures; the connection keeps its own sticky copy */
        Py_BEGIN_ALLOW_THREADS
        if (hold)
            status = pump_write_hold(c, (const unsigned char *)data, len, done, slice_ms, &err);
        else
            status = pump_write2(c, (const unsigned char *)head, head_len,
                                 (const unsigned char *)data, len, done, slice_ms, &err);
        Py_END_ALLOW_THREADS
        if (pump_take_break())
            status = SP_BROKE;
    }
    return status;
}

/* Append len bytes to the pending bytearray (write lock held). 0, or -1 with an exception. */
static int append_pending(Port *self, const char *data, Py_ssize_t len)
{
    Py_ssize_t queued = PyByteArray_Size(self->pending);
    if (len == 0)
        return 0;
    if (PyByteArray_Resize(self->pending, queued + len) < 0)
        return -1;
    memcpy(PyByteArray_AsString(self->pending) + queued, data, (size_t)len);
    return 0;
}

/* The pending bytes become what of pending + data[0:len] is left after its first `sent`
 * bytes. 0, or -1 with an exception. */
static int keep_unsent(Port *self, const char *data, size_t len, size_t sent)
{
    size_t held = (size_t)PyByteArray_Size(self->pending);
    if (sent < held) {
        char *p = PyByteArray_AsString(self->pending);
        memmove(p, p + sent, held - sent);
        if (PyByteArray_Resize(self->pending, (Py_ssize_t)(held - sent)) < 0)
            return -1;
        return append_pending(self, data, (Py_ssize_t)len);
    }
    sent -= held;
    if (PyByteArray_Resize(self->pending, 0) < 0)
        return -1;
    return sent < len ? append_pending(self, data + sent, (Py_ssize_t)(len - sent)) : 0;
}

/* The continuation of a write that did not finish in its first pump call: call_rest(b, sent),
 * where the write's bytes are the pending ones, then b (data[0:len]; NULL: none). If it raises
 * a signal handler's exception (Ctrl-C) or anything else that leaves the connection usable,
 * the pending bytes become exactly those OpenSSL did not take, counted by the connection
 * (sp_written) across the call, wherever the exception came from: nothing is sent twice, and
 * flush() sends the rest. A broken connection can send nothing more: they are dropped (the
 * write reported why). This runs in C, with no Python before it, so no exception comes first. */
static PyObject *continue_write(Port *self, sp_conn *c, PyObject *b, const char *data,
                                size_t len, size_t sent, PyObject *func)
{
    unsigned long long start = c != NULL ? written_nogil(c) : 0;
    PyObject *r = call_rest(self, b, sent, func), *type, *value, *tb;
    int kept;
    if (r != NULL || c == NULL) /* (c stays valid: the connection frees it only when freed) */
        return r;
    PyErr_Fetch(&type, &value, &tb);
    if (broken_nogil(c))
        kept = PyByteArray_Resize(self->pending, 0);
    else
        kept = keep_unsent(self, data, len, sent + (size_t)(written_nogil(c) - start));
    if (kept < 0)
        PyErr_Clear(); /* (no memory to keep them: the first exception says the write failed) */
    PyErr_Restore(type, value, tb);
    return NULL;
}

/* flush(): send the pending bytes with the write lock held, then release it. 0, or -1 with an
 * exception. */
static int send_pending(Port *self, sp_conn *c)
{
    size_t done, len = (size_t)PyByteArray_Size(self->pending);
    int status = pump_out(c, NULL, 0, PyByteArray_AsString(self->pending), len, &done, 0);
    PyObject *r;
    if (status == SP_OK && done == len)
        r = PyByteArray_Resize(self->pending, 0) < 0 ? NULL : new_none();
    else
        r = continue_write(self, c, NULL, NULL, 0, done, str_flush);
    return unlock_with(self, r);
}

/* More than a record is pending: the `queued` bytes held and the caller's b (exported as
 * `view`). Top the held bytes up from b to whole records (so that records stay full), then
 * send them and the rest of b in one pump call, without copying the rest of b. Releases the
 * view and the write lock. 0, or -1 with an exception. */
static int send_overflow(Port *self, sp_conn *c, PyObject *b, Py_buffer *view, Py_ssize_t queued)
{
    const char *data = view->buf;
    Py_ssize_t n = view->len, top = 0, head_len;
    size_t done;
    int status;
    PyObject *r;
    if (queued % record_size != 0) {
        top = record_size - queued % record_size;
        if (top > n)
            top = n;
    }
    if (append_pending(self, data, top) < 0) {
        PyBuffer_Release(view);
        return unlock_with(self, NULL);
    }
    head_len = queued + top;
    status = pump_out(c, PyByteArray_AsString(self->pending), (size_t)head_len, data + top,
                      (size_t)(n - top), &done, 0);
    if (status == SP_OK && done == (size_t)(head_len + n - top))
        r = PyByteArray_Resize(self->pending, 0) < 0 ? NULL : new_none();
    else if (done >= (size_t)head_len) /* the held bytes are out: b continues from its own */
        r = PyByteArray_Resize(self->pending, 0) < 0
                ? NULL
                : continue_write(self, c, b, data, (size_t)n,
                                 (size_t)top + done - (size_t)head_len, str_write);
    else /* held bytes are still to go: the rest of b joins them (the continuation's path) */
        r = append_pending(self, data + top, n - top) < 0
                ? NULL
                : continue_write(self, c, NULL, NULL, 0, done, str_write);
    PyBuffer_Release(view);
    return unlock_with(self, r);
}

/* A write of one full record with nothing pending: encrypted now and held by the connection
 * as ciphertext (sp_write_hold), not copied into the pending bytes; or, when the connection
 * already holds ciphertext, sent together with it. Releases the view and the write lock. 0, or
 * -1 with an exception. */
static int hold_record(Port *self, sp_conn *c, PyObject *b, Py_buffer *view)
{
    size_t done;
    int status = pump_out(c, NULL, 0, view->buf, (size_t)view->len, &done, 1);
    PyObject *r = status == SP_OK && done == (size_t)view->len
                      ? new_none()
                      : continue_write(self, c, b, view->buf, (size_t)view->len, done, str_write);
    PyBuffer_Release(view);
    return unlock_with(self, r);
}

/* The connection still queues bytes this port wrote (sp_held_out): a held record
 * (hold_record), or what a write that ran out of time left; 0 when closed. */
static int conn_holds(sp_conn *c)
{
    return c != NULL && held_nogil(c);
}

/* KEPT_ONLY (an output port with a timeout, or over streams): a write that adds to pending
 * bytes (they stay within one record) is done here; the first write after a send (which asks
 * whether the connection still holds bytes of this port's, its own way for each transport)
 * and anything that sends (more than a record, a flush, deadlines) are the Python method's
 * (ports.py SSLOutputPort.write, whose buffering branch this is). */
/* A write that took the lock once close() had begun (Port.closing): ValueError, nothing
 * kept. Releases the view and the write lock. */
static PyObject *closed_write(Port *self, Py_buffer *view)
{
    PyBuffer_Release(view);
    PyErr_SetString(PyExc_ValueError, "write to closed SSL port");
    return port_unlock(self, NULL);
}

static PyObject *kept_write(Port *self, PyObject *port, PyObject *b)
{
    Py_buffer view;
    Py_ssize_t queued;
    sp_conn *c;
    if (self->conn == NULL || PyObject_GetBuffer(b, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* (the Python method raises what it raises for it) */
        return off_call(port, M_WRITE, &b, 1);
    }
    if (lock_take(self->lock) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (LOAD_INT(&self->closing))
        return closed_write(self, &view);
    queued = PyByteArray_Size(self->pending);
    if (view.len > 0 && (c = conn_of(self->conn)) != NULL)
        pump_note_write(c); /* (writer_write) */
    if (view.len == 0 || queued == 0 || queued + view.len > record_size) {
        lock_give(self->lock);
        PyBuffer_Release(&view);
        return off_call(port, M_WRITE, &b, 1);
    }
    if (append_pending(self, view.buf, view.len) < 0) {
        PyBuffer_Release(&view);
        return port_unlock(self, NULL);
    }
    queued = view.len; /* (the count written) */
    PyBuffer_Release(&view);
    return port_unlock(self, PyLong_FromSsize_t(queued));
}

static PyObject *writer_write(Port *self, PyObject *port, PyObject *b)
{
    Py_buffer view;
    Py_ssize_t queued, n;
    sp_conn *c;
    int on = mode_of(self); /* (read once: set_mode may change it) */

    if (on == KEPT_ONLY)
        return kept_write(self, port, b);
    if (!on)
        return off_call(port, M_WRITE, &b, 1);
    if (self->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "write to closed SSL port");
        return NULL;
    }
    if (PyObject_GetBuffer(b, &view, PyBUF_SIMPLE) < 0) {
        name_type_error("write", "a bytes-like object", b, 0);
        return NULL;
    }
    n = view.len;
    if (lock_take(self->lock) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (LOAD_INT(&self->closing))
        return closed_write(self, &view);
    c = conn_of(self->conn);
    if (c != NULL)
        pump_note_write(c); /* (after a fork: this process has taken the connection over) */
    /* Up to one full record is held, as io.BufferedWriter holds a write that fits its buffer
     * exactly: a stream of 16 KiB writes then leaves two records per send() (ports.py
     * SSLOutputPort.write; bench/README.md section 3). More than a record is sent at once.
     * A full record written with nothing pending is held by the connection, already
     * encrypted; the next write, whatever its size, sends it. */
    queued = PyByteArray_Size(self->pending);
    if (queued == 0 && n == record_size) {
        if (hold_record(self, c, b, &view) < 0)
            return NULL;
        return PyLong_FromSsize_t(n);
    }
    if (queued + n > record_size || (queued == 0 && n > 0 && conn_holds(c))) {
        if (send_overflow(self, c, b, &view, queued) < 0)
            return NULL;
        return PyLong_FromSsize_t(n);
    }
    if (append_pending(self, view.buf, n) < 0) {
        PyBuffer_Release(&view);
        return port_unlock(self, NULL);
    }
    PyBuffer_Release(&view);
    return port_unlock(self, PyLong_FromSsize_t(n));
}

static PyObject *writer_flush(Port *self, PyObject *port, PyObject *unused)
{
    sp_conn *c;
    int on = mode_of(self); /* (read once: set_mode may change it) */
    (void)unused;
    if (on != ON) /* (KEPT_ONLY: a flush sends, under the port's timeout) */
        return off_call(port, M_FLUSH, NULL, 0);
    if (self->conn == NULL)
        Py_RETURN_NONE;
    if (PyByteArray_Size(self->pending) == 0 && !conn_holds(conn_of(self->conn)))
        Py_RETURN_NONE;
    if (lock_take(self->lock) < 0)
        return NULL;
    c = conn_of(self->conn);
    if (PyByteArray_Size(self->pending) == 0 && !conn_holds(c))
        return port_unlock(self, new_none());
    if (send_pending(self, c) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Writer(conn, lock, pending, mode=1): the state of an SSLOutputPort's C methods. */
static int writer_init(Port *self, PyObject *args, PyObject *kwds)
{
    PyObject *conn, *lock, *pending;
    int mode = ON;
    static char *names[] = {"conn", "lock", "pending", "mode", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|i:Writer", names, &conn, &lock, &pending,
                                     &mode))
        return -1;
    return port_init_mode(self, conn, lock, pending, mode);
}

static PyType_Slot writer_slots[] = {
    {Py_tp_doc, "The state of an SSLOutputPort's C methods (its _fast)."},
    {Py_tp_init, writer_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, port_dealloc},
    {Py_tp_traverse, port_traverse},
    {Py_tp_clear, port_clear},
    {Py_tp_methods, fast_methods},
    {Py_tp_getset, fast_getset},
    {0, NULL},
};

static PyType_Spec writer_spec = {
    "sslports._fastport.Writer", sizeof(Port), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, writer_slots,
};

/* ---- making a socket connection's ports ------------------------------------------------ */

/* Made once by module init: the two types, and the attribute names make_ports sets. */
static PyObject *str_conn, *str_timeout, *str_lock, *str_fast, *str_buf, *str_read_lock,
    *str_write_lock, *str_kept;

/* An instance of a port class without running its Python __init__ (make_ports sets its state). */
static PyObject *bare_instance(PyObject *type)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *empty, *obj;
    if (!PyType_Check(type) || tp->tp_new == NULL) {
        PyErr_SetString(PyExc_TypeError, "make_ports: the port classes must be instantiable types");
        return NULL;
    }
    if ((empty = PyTuple_New(0)) == NULL)
        return NULL;
    obj = tp->tp_new(tp, empty, NULL);
    Py_DECREF(empty);
    return obj;
}

/* A Reader or Writer (port_init's arguments) in the common case (ON). */
static PyObject *new_fast(PyObject *type, PyObject *conn, PyObject *lock, PyObject *pending)
{
    PyObject *fast = PyType_GenericNew((PyTypeObject *)type, NULL, NULL);
    if (fast == NULL)
        return NULL;
    if (port_init_mode((Port *)fast, conn, lock, pending, ON) < 0) {
        Py_DECREF(fast);
        return NULL;
    }
    return fast;
}

/* Set name = value on obj for each (name, value) pair (the port classes' slots); 0 or -1. */
static int set_attrs(PyObject *obj, PyObject *const *pairs, int n)
{
    int i;
    for (i = 0; i < n; i++)
        if (PyObject_SetAttr(obj, pairs[2 * i], pairs[2 * i + 1]) < 0)
            return -1;
    return 0;
}

/* make_ports(conn, input_type, output_type) -> (input_port, output_port): the ports of a socket
 * connection without a timeout, in the state their __init__ would give them (ports.py
 * SSLInputPort / SSLOutputPort; a test compares the two), the C methods' mode ON. Every
 * connection makes two ports, cold, right after its handshake: a Python __init__ each and the
 * Reader's and Writer's construction cost ~56 us there (~10 us warm). */
static PyObject *fast_make_ports(PyObject *module, PyObject *args)
{
    PyObject *conn, *in_type, *out_type, *result = NULL;
    PyObject *read_lock = NULL, *write_lock = NULL;
    PyObject *inp = NULL, *out = NULL, *buf = NULL, *kept = NULL, *reader = NULL, *writer = NULL;
    (void)module;
    if (!PyArg_ParseTuple(args, "OO!O!:make_ports", &conn, &PyType_Type, &in_type, &PyType_Type,
                          &out_type))
        return NULL;
    if ((read_lock = PyObject_GetAttr(conn, str_read_lock)) == NULL
        || (write_lock = PyObject_GetAttr(conn, str_write_lock)) == NULL
        || (inp = bare_instance(in_type)) == NULL || (out = bare_instance(out_type)) == NULL
        || (buf = PyByteArray_FromStringAndSize(NULL, 0)) == NULL
        || (kept = PyByteArray_FromStringAndSize(NULL, 0)) == NULL)
        goto done;
    {
        /* (no _timeout: None is the classes' default) */
        PyObject *in_attrs[] = {str_conn, conn, str_lock, read_lock, str_buf, kept};
        PyObject *out_attrs[] = {str_conn, conn, str_lock, write_lock, str_buf, buf};
        if (set_attrs(inp, in_attrs, 3) < 0 || set_attrs(out, out_attrs, 3) < 0)
            goto done;
    }
    if ((reader = new_fast(reader_type, conn, read_lock, kept)) == NULL
        || (writer = new_fast(writer_type, conn, write_lock, buf)) == NULL)
        goto done;
    if (PyObject_SetAttr(inp, str_fast, reader) < 0 || PyObject_SetAttr(out, str_fast, writer) < 0)
        goto done;
    if (PyObject_SetAttr(conn, str_kept, kept) < 0)
        goto done;
    result = PyTuple_Pack(2, inp, out);
done:
    Py_XDECREF(read_lock);
    Py_XDECREF(write_lock);
    Py_XDECREF(inp);
    Py_XDECREF(out);
    Py_XDECREF(buf);
    Py_XDECREF(kept);
    Py_XDECREF(reader);
    Py_XDECREF(writer);
    return result;
}

/* ---- the hot methods, on the port classes ------------------------------------------------- */

/* Where a port keeps its Reader / Writer: the offset of the `_fast` slot of the port classes'
 * common base (ports.py _SSLPort), found by hot_methods. */
static Py_ssize_t fast_offset;

/* The port's Reader or Writer (`type`; a new reference), or NULL when it has none of that
 * type (made without this module): then the Python method does the call. The slot is set when
 * the port is made and never replaced, so it is read as it is, without a lock. */
static Port *fast_of(PyObject *port, PyObject *type)
{
    PyObject *fast = fast_offset > 0 ? *(PyObject **)((char *)port + fast_offset) : NULL;
    if (fast == NULL || (PyObject *)Py_TYPE(fast) != type)
        return NULL;
    Py_INCREF(fast);
    return (Port *)fast;
}

/* Each C method finds the port's Reader / Writer (NULL: none of its own, so OFF) and does the
 * call there. */
#define HOT_METHOD(name, type, impl, params, args)                                               \
    static PyObject *name params                                                                 \
    {                                                                                            \
        Port *f = fast_of(port, type);                                                           \
        PyObject *r = impl args;                                                                 \
        Py_XDECREF(f);                                                                           \
        return r;                                                                                \
    }
HOT_METHOD(in_readinto, reader_type, reader_readinto, (PyObject *port, PyObject *b), (f, port, b))
HOT_METHOD(in_readinto1, reader_type, reader_readinto1, (PyObject *port, PyObject *b), (f, port, b))
HOT_METHOD(in_read, reader_type, reader_read, (PyObject *port, PyObject *args), (f, port, args))
HOT_METHOD(in_read1, reader_type, reader_read1, (PyObject *port, PyObject *args), (f, port, args))
HOT_METHOD(in_readline, reader_type, reader_readline,
           (PyObject *port, PyObject *const *args, Py_ssize_t nargs), (f, port, args, nargs))
HOT_METHOD(in_peek, reader_type, reader_peek,
           (PyObject *port, PyObject *const *args, Py_ssize_t nargs), (f, port, args, nargs))
HOT_METHOD(out_write, writer_type, writer_write, (PyObject *port, PyObject *b), (f, port, b))
HOT_METHOD(out_flush, writer_type, writer_flush, (PyObject *port, PyObject *unused),
           (f, port, unused))

/* In M_ order: M_READINTO .. M_PEEK are SSLInputPort's, M_WRITE and M_FLUSH SSLOutputPort's. */
static PyMethodDef hot_defs[N_HOT] = {
    {"readinto", (PyCFunction)in_readinto, METH_O, "Read into b until it is full or EOF."},
    {"readinto1", (PyCFunction)in_readinto1, METH_O, "Read what arrives (>= 1 byte) into b."},
    {"read", (PyCFunction)in_read, METH_VARARGS, "Read size bytes (all, when -1 or None)."},
    {"read1", (PyCFunction)in_read1, METH_VARARGS, "Read what arrives, up to size bytes."},
    {"readline", (PyCFunction)(void (*)(void))in_readline, METH_FASTCALL,
     "Read up to and including a newline (at most size bytes, when size >= 0)."},
    {"peek", (PyCFunction)(void (*)(void))in_peek, METH_FASTCALL,
     "The bytes read ahead, not taken (at least one unless at EOF; one read when none)."},
    {"write", (PyCFunction)out_write, METH_O, "Buffer b; send once a record is full."},
    {"flush", (PyCFunction)out_flush, METH_NOARGS, "Send what is buffered."},
};

/* hot_methods(input_cls, output_cls): put the C methods on the two port classes (method
 * descriptors: nothing per port), keeping the classes' Python methods for off_call. Once, at
 * import (ports.py). */
static PyObject *fast_hot_methods(PyObject *module, PyObject *args)
{
    PyObject *cls[2];
    int i;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!O!:hot_methods", &PyType_Type, &cls[0], &PyType_Type,
                          &cls[1]))
        return NULL;
    for (i = 0; i < 2; i++) { /* both classes: the same `_fast` slot, an object member */
        PyObject *slot = PyObject_GetAttr(cls[i], str_fast);
        PyMemberDef *member;
        if (slot == NULL)
            return NULL;
        member = Py_TYPE(slot) == &PyMemberDescr_Type ? ((PyMemberDescrObject *)slot)->d_member
                                                      : NULL;
        if (member == NULL || member->type != MEMBER_OBJECT_EX || member->offset <= 0
            || (i == 1 && member->offset != fast_offset)) {
            Py_DECREF(slot);
            PyErr_SetString(PyExc_TypeError, "hot_methods: the port classes have no _fast slot");
            return NULL;
        }
        fast_offset = member->offset;
        Py_DECREF(slot);
    }
    for (i = 0; i < N_HOT; i++) {
        PyObject *owner = cls[i < M_WRITE ? 0 : 1], *func = NULL, *descr = NULL;
        PyObject *name = PyUnicode_InternFromString(hot_defs[i].ml_name);
        int rc = -1;
        if (name != NULL && (func = PyObject_GetAttr(owner, name)) != NULL) {
            if (!PyFunction_Check(func))
                PyErr_Format(PyExc_TypeError, "hot_methods: %s.%U is not a Python function",
                             ((PyTypeObject *)owner)->tp_name, name);
            else if ((descr = PyDescr_NewMethod((PyTypeObject *)owner, &hot_defs[i])) != NULL)
                rc = PyObject_SetAttr(owner, name, descr);
        }
        Py_XDECREF(name);
        Py_XDECREF(descr);
        if (rc < 0) {
            Py_XDECREF(func);
            return NULL;
        }
        Py_XSETREF(python_method[i], func);
    }
    Py_RETURN_NONE;
}

/* ---- close: both ports' close() ---------------------------------------------------------- */

/* Every connection closes two ports, cold, at its end: the Python close() of each (the claim,
 * flush, io's close, taking the C methods away, the connection's count of open ports) cost
 * ~35 us per connection there, ~5 % of a resumed connection. This is ports.py's
 * SSLInputPort.close / SSLOutputPort.close, step for step and in the same order (ports.py
 * installs it on both classes as a method descriptor: no Python frame, nothing per port), and
 * the last close of a socket connection (conn_last_closed). What is not the common case calls
 * back into Python: close_notify (SSLOutputPort._close_notify), and the last close of a stream
 * connection or of one already freed (Connection.last_port_closed). */
static PyObject *iobase_close; /* io.BufferedIOBase.close */
static PyObject *str_claimed, *str_close_flushed, *str_shutdown_on_close, *str_abandoned,
    *str_close_notify, *str_open_ports, *str_port_closed, *str_last_port_closed, *str_linger_close,
    *str_free_at_last_close, *str_free, *str_live_transports,
    *str_is_socket, *str_caches_session, *str_transport, *str_sock, *str_shutdown, *str_close;

/* What Python's `finally` does with exceptions: one raised by a later step replaces the one in
 * flight, which becomes its __context__. */
typedef struct {
    PyObject *type, *value, *tb;
} in_flight;

static void note_failure(in_flight *f)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    if (f->value != NULL && value != NULL && value != f->value) {
        PyException_SetContext(value, f->value); /* (takes the reference) */
        f->value = NULL;
    }
    Py_XDECREF(f->type);
    Py_XDECREF(f->value);
    Py_XDECREF(f->tb);
    f->type = type;
    f->value = value;
    f->tb = tb;
}

static void call_noted(in_flight *f, PyObject *r)
{
    if (r == NULL)
        note_failure(f);
    Py_XDECREF(r);
}

/* ports.py _claim_close: 1 for exactly one caller (this one), 0 when the port was claimed
 * already, -1 with an exception. One atomic setdefault (3.13+; before, no Python runs between
 * the look and the store, str keys, which the GIL makes one step), so two threads cannot both
 * claim; a claim made by the Python path counts here and vice versa. */
static int claim_close(PyObject *dict)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *had = NULL;
    int r = PyDict_SetDefaultRef(dict, str_claimed, Py_True, &had);
    Py_XDECREF(had);
    return r < 0 ? -1 : r == 0;
#else
    if (PyDict_GetItemWithError(dict, str_claimed) != NULL)
        return 0;
    if (PyErr_Occurred())
        return -1;
    return PyDict_SetItem(dict, str_claimed, Py_True) < 0 ? -1 : 1;
#endif
}

/* bool(obj.name): 1, 0, or -1 with an exception. */
static int attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    int yes = v == NULL ? -1 : PyObject_IsTrue(v);
    Py_XDECREF(v);
    return yes;
}

/* Connection.last_port_closed(timeout) for a socket connection that is still open, step for
 * step (ports.py); anything else (a stream connection, one already freed) goes to the
 * Python method. None, or NULL with an exception. */
static PyObject *conn_last_closed(PyObject *conn, PyObject *timeout)
{
    PyObject *locks[2] = {NULL, NULL}, *transport = NULL, *sock = NULL, *r = NULL;
    sp_conn *c;
    err_room err;
    int yes = attr_true(conn, str_is_socket), taken = 0;
    if (yes < 0)
        return NULL;
    c = yes ? conn_of(conn) : NULL;
    /* (after a fork, another process may share the socket: the Python method knows) */
    if (c == NULL || pump_forked(c))
        return PyObject_CallMethodOneArg(conn, str_last_port_closed, timeout);
    if ((yes = attr_true(conn, str_caches_session)) < 0)
        return NULL;
    if ((transport = PyObject_GetAttr(conn, str_transport)) == NULL
        || (sock = PyObject_GetAttr(transport, str_sock)) == NULL
        || (locks[0] = PyObject_GetAttr(conn, str_read_lock)) == NULL
        || (locks[1] = PyObject_GetAttr(conn, str_write_lock)) == NULL)
        goto done;
    if ((PyObject *)Py_TYPE(locks[0]) != lock_type || (PyObject *)Py_TYPE(locks[1]) != lock_type) {
        PyErr_SetString(PyExc_TypeError, "close: the direction locks are not _fastport.Lock");
        goto done;
    }
    /* Closed from a signal handler or a callback inside this thread's own call on the
     * connection, which holds its lock: the Python method closes the socket from a thread of
     * its own once that call has left (waiting here would wait for itself). */
    if (lock_owned((Lock *)locks[0]) || lock_owned((Lock *)locks[1])) {
        r = PyObject_CallMethodOneArg(conn, str_last_port_closed, timeout);
        goto done;
    }
    if (PyObject_SetAttr(conn, str_addr, zero) < 0
        || PyObject_SetAttr(conn, str_closed, Py_True) < 0)
        goto done;
    /* Tickets that already arrived go to the session cache, unless a read in another thread is
     * still under way (the read lock is held): the drain's SSL_read would take application
     * data from between the bytes that read returns (ports.py last_port_closed). */
    if (yes && lock_wait((Lock *)locks[0], 0) == 1) {
        Py_BEGIN_ALLOW_THREADS /* (the pump's calls here never wait; CFFI's release it too) */
        pump_drain_tickets(c);
        Py_END_ALLOW_THREADS
        lock_give((Lock *)locks[0]);
    }
    Py_BEGIN_ALLOW_THREADS
    pump_flush(c, 0, &err); /* what is still queued leaves without waiting (tickets) */
    Py_END_ALLOW_THREADS
    /* LINGERING CLOSE (sp_conn.c): with bytes still to deliver, shut our side only and hand
     * the socket to ports.py's lingerer, which closes it once the kernel delivered them
     * (Connection.linger_close). A call of another thread learns of the close without
     * SHUT_RD, which would make the kernel answer the peer's late bytes with a reset: a write
     * fails at once, a read waiting in recv() ends at its slice (its continuation finds both
     * ports closed: EOF). When the call has not left within LINGER_WAKE_US, the close below
     * wakes it with SHUT_RDWR (ports.py linger_when_idle). */
    if (pump_unsent(c) > 0) {
        int got = 0;
        if ((r = PyObject_CallMethodOneArg(sock, str_shutdown, shut_wr)) == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_OSError))
                goto done;
            PyErr_Clear();
        }
        Py_CLEAR(r);
        if ((got = lock_wait((Lock *)locks[0], LINGER_WAKE_US)) == 1) {
            if ((got = lock_wait((Lock *)locks[1], LINGER_WAKE_US)) == 1) {
                Py_BEGIN_ALLOW_THREADS
                pump_drop_unread(c);
                Py_END_ALLOW_THREADS
                lock_give((Lock *)locks[1]);
                lock_give((Lock *)locks[0]);
                r = PyObject_CallMethodOneArg(conn, str_linger_close, sock);
                goto done;
            }
            lock_give((Lock *)locks[0]);
        }
        if (got < 0) /* (a signal handler's exception while it waited) */
            goto done;
    }
    /* shutdown() first: it wakes a call still waiting on the socket in another thread and puts
     * our FIN out before close() could answer unread ciphertext with a reset. */
    if ((r = PyObject_CallMethodOneArg(sock, str_shutdown, shut_rdwr)) == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError))
            goto done;
        PyErr_Clear();
    }
    Py_CLEAR(r);
    /* Wait for a call still in the pump to leave (it holds its direction's lock). */
    for (; taken < 2; taken++)
        if (lock_take((Lock *)locks[taken]) < 0)
            break;
    while (taken > 0)
        lock_give((Lock *)locks[--taken]);
    if (PyErr_Occurred())
        goto done;
    Py_BEGIN_ALLOW_THREADS
    pump_drop_unread(c); /* unread bytes would make close() answer with a reset */
    Py_END_ALLOW_THREADS
    r = PyObject_CallMethodNoArgs(sock, str_close);
done:
    Py_XDECREF(transport);
    Py_XDECREF(sock);
    Py_XDECREF(locks[0]);
    Py_XDECREF(locks[1]);
    return r;
}

/* ports.py port_closed's `finally`: the transport leaves Connection.live_transports, and a
 * connection the collector finalized while one of its ports was still open (Connection.__del__)
 * is freed by its last close. `r`: what the last close returned (NULL: its exception, which an
 * exception of this step replaces, as in Python). */
static PyObject *after_last_close(PyObject *conn, PyObject *r)
{
    in_flight f = {NULL, NULL, NULL};
    PyObject *live, *transport = NULL;
    int yes;
    if (r == NULL) /* (first: no API call may run with an exception set) */
        note_failure(&f);
    live = PyObject_GetAttr(conn, str_live_transports);
    if (live == NULL || (transport = PyObject_GetAttr(conn, str_transport)) == NULL
        || PySet_Discard(live, transport) < 0)
        note_failure(&f);
    Py_XDECREF(transport);
    Py_XDECREF(live);
    yes = attr_true(conn, str_free_at_last_close);
    if (yes < 0)
        note_failure(&f);
    else if (yes > 0)
        call_noted(&f, PyObject_CallMethodNoArgs(conn, str_free));
    if (f.value == NULL && f.type == NULL)
        return r;
    Py_XDECREF(r);
    PyErr_Restore(f.type, f.value, f.tb);
    return NULL;
}

/* Connection.port_closed(timeout): pop one of open_ports (atomic, as list.pop is); the port that
 * pops a false item is the last and closes the connection (in Python: it is the rare,
 * system-call-heavy end of the connection). Anything unexpected goes to the Python method. */
static PyObject *conn_port_closed(PyObject *conn, PyObject *timeout)
{
    PyObject *open = PyObject_GetAttr(conn, str_open_ports);
    Py_ssize_t n;
    int other_open = -1; /* -1: nothing popped; -2: the pop failed */
    if (open == NULL)
        return NULL;
    if (PyList_CheckExact(open)) {
        Py_BEGIN_CRITICAL_SECTION(open); /* (the look and the pop are one step) */
        n = PyList_GET_SIZE(open);
        if (n > 0) {
            other_open = PyList_GET_ITEM(open, n - 1) == Py_True;
            if (PyList_SetSlice(open, n - 1, n, NULL) < 0)
                other_open = -2;
        }
        Py_END_CRITICAL_SECTION();
    }
    Py_DECREF(open);
    if (other_open == -2)
        return NULL;
    if (other_open == -1) /* (closed more often than it has ports: Python's pop() raises) */
        return PyObject_CallMethodOneArg(conn, str_port_closed, timeout);
    if (other_open)
        return new_none();
    return after_last_close(conn, conn_last_closed(conn, timeout));
}

/* `self.conn.shutdown_on_close and not self._abandoned`: 1, 0, or -1 with an exception. */
static int wants_close_notify(PyObject *port, PyObject *conn)
{
    int yes = attr_true(conn, str_shutdown_on_close);
    if (yes != 1)
        return yes;
    yes = attr_true(port, str_abandoned);
    return yes < 0 ? -1 : !yes;
}

/* The output port's lock is free, or a write in another thread releases it within
 * CLOSE_WAIT_US (it was only running): 1. It stays held (a write waiting for a peer that does
 * not read): 0. A signal handler's exception while waiting is noted in f: 0. */
#define CLOSE_WAIT_US 1000000
static int write_ends_soon(Lock *lock, in_flight *f)
{
    /* Taken, not only looked at: close sets `closing`, then a write that takes the lock after
     * this sees it. (Peeking at `locked` instead, a free-threaded build's relaxed loads could
     * each miss the other side's store: a write that saw no close, a close that saw no
     * write, and the write's bytes after close_notify.) */
    int r;
    if (lock_owned(lock)) /* (a close from a signal handler inside this thread's own write) */
        return 0;
    r = lock_wait(lock, CLOSE_WAIT_US);
    if (r > 0)
        lock_give(lock);
    else if (r < 0)
        note_failure(f);
    return r > 0;
}

/* _sync_fast() turning the port's C methods off (ports.py: the Python methods do the calls
 * from now on). */
static void methods_off(PyObject *port, int output)
{
    Port *fast = fast_of(port, output ? writer_type : reader_type);
    if (fast != NULL) {
        STORE_INT(&fast->on, OFF);
        Py_DECREF(fast);
    }
}

static PyObject *close_port(PyObject *port, int output)
{
    PyObject *dict = PyObject_GenericGetDict(port, NULL), *conn = NULL, *timeout;
    in_flight f = {NULL, NULL, NULL};
    int claimed;
    if (dict == NULL)
        return NULL;
    claimed = PyDict_Check(dict) ? claim_close(dict) : -1;
    if (claimed <= 0) {
        if (claimed < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "close: the port has no instance dict");
        Py_DECREF(dict);
        return claimed < 0 ? NULL : new_none();
    }
    if (output) { /* try: flush, close_notify (unless a write holds the lock); finally: ... */
        int notify;
        PyObject *lock;
        Port *fast;
        if ((conn = PyObject_GetAttr(port, str_conn)) == NULL) {
            Py_DECREF(dict);
            return NULL;
        }
        /* A port that is not ON (a timeout, streams) closes with its Python methods, as
         * ports.py does. */
        if ((fast = fast_of(port, writer_type)) != NULL) {
            STORE_INT(&fast->closing, 1);
            if (LOAD_INT(&fast->on) != ON)
                STORE_INT(&fast->on, OFF);
            Py_DECREF(fast);
        }
        if (in_a_child(conn))
            goto flushed; /* ports.py SSLOutputPort.close: the parent's bytes stay its own */
        lock = PyObject_GetAttr(port, str_lock); /* (the `_lock` slot) */
        if (lock == NULL) {
            note_failure(&f);
        } else if ((PyObject *)Py_TYPE(lock) == lock_type && !write_ends_soon((Lock *)lock, &f)) {
            /* ports.py SSLOutputPort.close: a write in another thread that does not end (a
             * peer that does not read) is not waited for */
            Py_DECREF(lock);
            goto flushed;
        }
        Py_XDECREF(lock);
        call_noted(&f, PyObject_CallMethodNoArgs(port, str_flush));
        if (f.value == NULL && (notify = wants_close_notify(port, conn)) != 0)
            call_noted(&f, notify < 0 ? NULL : PyObject_CallMethodNoArgs(port, str_close_notify));
    }
flushed:
    /* io's close() calls flush() again: the Python one, which returns at once (the C one
     * would send what a failed flush left, or wait for a write that does not end) */
    if (output && PyDict_SetItem(dict, str_close_flushed, Py_True) < 0)
        note_failure(&f);
    methods_off(port, output); /* _sync_fast(): closing, so off */
    call_noted(&f, PyObject_CallOneArg(iobase_close, port));
    if (conn == NULL && (conn = PyObject_GetAttr(port, str_conn)) == NULL) {
        note_failure(&f);
    } else if (f.type != NULL && (PyErr_GivenExceptionMatches(f.type, PyExc_KeyboardInterrupt)
                                  || PyErr_GivenExceptionMatches(f.type, PyExc_SystemExit))) {
        /* a request to stop (Ctrl-C) in the flush or the goodbye: the last close does not
         * wait either (ports.py SSLOutputPort.close) */
        call_noted(&f, conn_port_closed(conn, zero));
    } else if ((timeout = PyObject_GetAttr(port, str_timeout)) == NULL) {
        note_failure(&f);
    } else {
        call_noted(&f, conn_port_closed(conn, timeout));
        Py_DECREF(timeout);
    }
    Py_XDECREF(conn);
    Py_DECREF(dict);
    if (f.value != NULL || f.type != NULL) {
        PyErr_Restore(f.type, f.value, f.tb);
        return NULL;
    }
    return new_none();
}

static PyObject *close_input(PyObject *port, PyObject *unused)
{
    (void)unused;
    return close_port(port, 0);
}

static PyObject *close_output(PyObject *port, PyObject *unused)
{
    (void)unused;
    return close_port(port, 1);
}

static PyMethodDef close_defs[] = {
    {"close", close_input, METH_NOARGS,
     "Close the port; the connection ends once both ports are closed."},
    {"close", close_output, METH_NOARGS,
     "Send what is buffered and close the port; the connection ends once both ports are "
     "closed."},
};

/* close_method(cls, output) -> a method descriptor for cls.close (C's close_port). */
static PyObject *fast_close_method(PyObject *module, PyObject *args)
{
    PyObject *cls;
    int output;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!p:close_method", &PyType_Type, &cls, &output))
        return NULL;
    return PyDescr_NewMethod((PyTypeObject *)cls, &close_defs[output ? 1 : 0]);
}

/* ---- the handshake of a socket connection ----------------------------------------------- */

/* Milliseconds of a monotonic clock (the handshake's deadline). */
static double now_ms(void)
{
#ifdef _WIN32
    return (double)GetTickCount64();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
#endif
}

/* handshake(conn_addr, timeout, err_addr) -> status: ports.py Connection.handshake's loop for a
 * socket connection (its Python runs once per connection, cold, and a server's handshake takes
 * two pump calls): sp_handshake, one slice at a time with the GIL released, until it is done
 * or fails (the status and the error record, for Python to report), or the timeout (None:
 * none) has passed (SP_WANT_READ / SP_WANT_WRITE, for Python to raise its timeout). Signal
 * handlers run between slices, as in the Python loop; their exception ends the call. */
static PyObject *fast_handshake(PyObject *module, PyObject *args)
{
    PyObject *addr, *timeout, *err_addr;
    sp_conn *c;
    void *err;
    double deadline = 0;
    int status, timed = 0;
    (void)module;
    if (!PyArg_ParseTuple(args, "OOO:handshake", &addr, &timeout, &err_addr))
        return NULL;
    c = (sp_conn *)PyLong_AsVoidPtr(addr);
    err = PyLong_AsVoidPtr(err_addr);
    if (c == NULL || err == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "handshake: null connection or error record");
        return NULL;
    }
    if (timeout != Py_None) {
        double seconds = PyFloat_AsDouble(timeout);
        if (seconds == -1.0 && PyErr_Occurred())
            return NULL;
        deadline = now_ms() + seconds * 1e3;
        timed = 1;
    }
    for (;;) {
        int wait = slice_ms;
        if (timed) { /* _timing.py _Deadline.slice_ms */
            double left = deadline - now_ms();
            wait = left <= 0 ? 0 : left + 1 < slice_ms ? (int)left + 1 : slice_ms;
        }
        Py_BEGIN_ALLOW_THREADS
        status = pump_handshake(c, wait, err);
        Py_END_ALLOW_THREADS
        if (pump_take_break()) /* (Python raises it: Connection.handshake) */
            break;
        if (status != SP_WANT_READ && status != SP_WANT_WRITE)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
        if (timed && now_ms() >= deadline)
            break;
    }
    return PyLong_FromLong(status);
}

/* ---- module -------------------------------------------------------------------------- */

static PyObject *fast_init(PyObject *module, PyObject *args)
{
    enum { N_FNS = 16 }; /* the pump functions init() takes, in its argument order */
    PyObject *fns, *addr[N_FNS], *all;
    void *fn[N_FNS];
    int slice, i;
    Py_ssize_t record, err_size;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!ninO:init", &PyTuple_Type, &fns, &err_size, &slice, &record,
                          &all))
        return NULL;
    if (PyTuple_GET_SIZE(fns) != N_FNS) {
        PyErr_Format(PyExc_ValueError, "init: %d pump functions expected", (int)N_FNS);
        return NULL;
    }
    for (i = 0; i < N_FNS; i++)
        addr[i] = PyTuple_GET_ITEM(fns, i);
    if (err_size <= 0 || err_size > ERR_ROOM) {
        PyErr_Format(PyExc_ValueError, "init: an sp_err of %zd bytes does not fit", err_size);
        return NULL;
    }
    for (i = 0; i < N_FNS; i++) { /* function pointers travel as integers: CFFI's way */
        fn[i] = PyLong_AsVoidPtr(addr[i]);
        if (fn[i] == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "init: null pump function");
            return NULL;
        }
    }
    if (slice < 0 || record <= 0 || !PyCallable_Check(all)) {
        PyErr_SetString(PyExc_ValueError, "init: bad slice, record size or read_all");
        return NULL;
    }
    pump_read = (read_fn)(uintptr_t)fn[0];
    pump_write2 = (write2_fn)(uintptr_t)fn[1];
    pump_write_hold = (write_fn)(uintptr_t)fn[2];
    pump_held = (held_fn)(uintptr_t)fn[3];
    pump_written = (written_fn)(uintptr_t)fn[4];
    pump_broken = (held_fn)(uintptr_t)fn[5];
    pump_flush = (flush_fn)(uintptr_t)fn[6];
    pump_drain_tickets = (conn_fn)(uintptr_t)fn[7];
    pump_drop_unread = (conn_fn)(uintptr_t)fn[8];
    pump_handshake = (handshake_fn)(uintptr_t)fn[9];
    pump_held_try = (held_fn)(uintptr_t)fn[10];
    pump_forked = (forked_fn)(uintptr_t)fn[11];
    pump_in_callback = (in_callback_fn)(uintptr_t)fn[12];
    pump_unsent = (unsent_fn)(uintptr_t)fn[13];
    pump_take_break = (take_break_fn)(uintptr_t)fn[14];
    pump_note_write = (note_write_fn)(uintptr_t)fn[15];
    slice_ms = slice;
    record_size = record;
    Py_INCREF(all);
    Py_XSETREF(read_all, all);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"init", fast_init, METH_VARARGS,
     "init((sp_read, sp_write2, sp_write_hold, sp_held_out, sp_written, sp_conn_broken, "
     "sp_flush, sp_conn_drain_tickets, sp_conn_drop_unread, sp_handshake, sp_held_out_try, "
     "sp_conn_forked, sp_conn_in_callback, sp_conn_unsent, sp_take_break, sp_conn_note_write "
     "addresses), "
     "sizeof_sp_err, "
     "slice_ms, record_size, read_all): bind the pump."},
    {"make_ports", fast_make_ports, METH_VARARGS,
     "make_ports(conn, input_type, output_type): a socket connection's two ports (no timeout)."},
    {"handshake", fast_handshake, METH_VARARGS,
     "handshake(conn_addr, timeout, err_addr) -> status: a socket connection's handshake."},
    {"hot_methods", fast_hot_methods, METH_VARARGS,
     "hot_methods(input_cls, output_cls): the ports' hot methods in C, on their classes."},
    {"close_method", fast_close_method, METH_VARARGS,
     "close_method(cls, output): the close() of cls's ports, as a method descriptor."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastport_module = {
    PyModuleDef_HEAD_INIT, "_fastport",
    "The ports' hot methods in C (see csrc/py/sp_fastport.c).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

/* Make a type and add it to the module; *keep gets a reference for C. 0 or -1. */
static int add_type(PyObject *m, PyType_Spec *spec, const char *name, PyObject **keep)
{
    PyObject *tp = PyType_FromSpec(spec);
    if (tp == NULL)
        return -1;
    Py_INCREF(tp);
    if (PyModule_AddObject(m, name, tp) < 0) {
        Py_DECREF(tp);
        Py_DECREF(tp);
        return -1;
    }
    *keep = tp;
    return 0;
}

static int intern_all(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&str_addr, "_fast_addr"},       {&str_conn, "_sslports_conn"},
        {&str_timeout, "_timeout"},      {&str_lock, "_lock"},
        {&str_fast, "_fast"},            {&str_buf, "_buf"},
        {&str_read_lock, "read_lock"},   {&str_write_lock, "write_lock"},
        {&str_read_rest, "read_rest"},   {&str_write_rest, "write_rest"},
        {&str_write, "write"},
        {&str_kept, "kept"},
        {&str_claimed, "_close_claimed"},
        {&str_flush, "flush"},
        {&str_shutdown_on_close, "shutdown_on_close"},
        {&str_abandoned, "_abandoned"},
        {&str_close_flushed, "_close_flushed"},
        {&str_close_notify, "_close_notify"},
        {&str_open_ports, "open_ports"},
        {&str_port_closed, "port_closed"},
        {&str_free_at_last_close, "free_at_last_close"},
        {&str_free, "free"},
        {&str_live_transports, "live_transports"},
        {&str_last_port_closed, "last_port_closed"},
        {&str_linger_close, "linger_close"},
        {&str_is_socket, "is_socket"},
        {&str_caches_session, "caches_session"},
        {&str_closed, "closed"},
        {&str_transport, "transport"},
        {&str_sock, "sock"},
        {&str_shutdown, "shutdown"},
        {&str_close, "close"},
    };
    size_t i;
    for (i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

/* io.BufferedIOBase.close, which close_port calls as ports.py's close() does; the constants
 * conn_last_closed passes. */
static int find_iobase_close(void)
{
    PyObject *io = PyImport_ImportModule("io"), *cls, *sock = PyImport_ImportModule("_socket");
    if (sock == NULL) {
        Py_XDECREF(io);
        return -1;
    }
    shut_rdwr = PyObject_GetAttrString(sock, "SHUT_RDWR");
    shut_wr = PyObject_GetAttrString(sock, "SHUT_WR");
    Py_DECREF(sock);
    if (shut_rdwr == NULL || shut_wr == NULL || (zero = PyLong_FromLong(0)) == NULL) {
        Py_XDECREF(io);
        return -1;
    }
    if (io == NULL)
        return -1;
    cls = PyObject_GetAttrString(io, "BufferedIOBase");
    Py_DECREF(io);
    if (cls == NULL)
        return -1;
    iobase_close = PyObject_GetAttrString(cls, "close");
    Py_DECREF(cls);
    return iobase_close == NULL ? -1 : 0;
}

PyMODINIT_FUNC PyInit__fastport(void)
{
    PyObject *m = PyModule_Create(&fastport_module);
    if (m == NULL)
        return NULL;
    if (intern_all() < 0 || find_iobase_close() < 0
        || add_type(m, &lock_spec, "Lock", &lock_type) < 0
        || add_type(m, &reader_spec, "Reader", &reader_type) < 0
        || add_type(m, &writer_spec, "Writer", &writer_type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* Safe without the GIL (FREE-THREADED CPYTHON, above): importing it keeps the GIL off. */
    if (PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
