/* The collector's compiled span writer: collector.otlp_encoder's common case in C.
 *
 * SessionEncoder.encode_span writes a span record as one `ScopeSpans.spans` field. For the
 * common record (a function whose rules replace no per-span attribute, no error, link,
 * remote parent or captured arguments, state not failed) SpanWriter.encode writes the very
 * same bytes here; every other record, and any value it does not expect, it leaves to
 * Python (None in its answer), which also raises what a malformed record raises. What
 * never changes comes from Python, serialized once by the opentelemetry.proto classes:
 * field tags, each function's name and constant attributes, each event's parts.
 *
 * One binary for every CPython from 3.12 on (the limited API); optional: without it,
 * or with ASYNC_INSPECT_ACCELERATOR=0, Python encodes everything.
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030C0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Bumped whenever what otlp_encoder.py passes in or expects back changes. */
#define ABI_VERSION 1
/* Distinct details kept per event kind; past that the cache starts again (details name
 * tasks, so they need not repeat). Python's _event_parts keeps as many pairs. */
#define MAX_EVENT_PARTS 4096
#define MAX_EXACT_DOUBLE (INT64_C(1) << 53)
/* Event kinds are small ints (wire.EVENT_*); others are left to Python. */
#define MAX_KINDS 16

/* wire.py's record layout and values, checked against Python's when a writer is made. */
enum {
    R_ID, R_PARENT, R_TRACE, R_TASK, R_CODE, R_THREAD, R_START, R_END, R_STATE, R_POLLS,
    R_BUSY, R_EVENTS, R_EVENTS_DROPPED, R_ERROR, R_TASK_NAME, R_PARENT_TASK, R_LINK,
    R_REMOTE, R_FLAGS, R_ATTRS, R_FIELDS
};

/* The pieces Python serialized once, by name (otlp_encoder._writer_pieces). */
#define PIECES(X)                                                                         \
    X(trace_id) X(span_id) X(parent_id) X(start) X(end) X(attribute) X(value)             \
    X(int_value) X(string_value) X(status_unset) X(flags_local) X(spans) X(start_unknown)  \
    X(duration) X(busy) X(waiting) X(thread_key) X(task_key) X(polls_key)                  \
    X(parent_task_key) X(task_name_key) X(events_dropped_key)
#define PIECE_ENUM(n) P_##n,
enum { PIECES(PIECE_ENUM) P_COUNT };
#define PIECE_TEXT(n) #n,
static const char *PIECE_NAMES[] = {PIECES(PIECE_TEXT)};

typedef struct {
    const char *data;
    Py_ssize_t size;
} Piece;

typedef struct {
    PyObject_HEAD
    PyObject *pieces_owner; /* the bytes the pieces point into */
    Piece pieces[P_COUNT];
    PyObject *states;      /* {state: the task.state attribute field} */
    PyObject *codes;       /* the session's {code id: CodeInfo} */
    PyObject *functions;   /* {code id: (CodeInfo, constant fields)} of simple functions */
    PyObject *event_parts; /* otlp_encoder._event_parts(kind, detail) -> (head, rest) */
    PyObject *none_parts[MAX_KINDS];   /* per event kind: (head, rest) with no detail */
    PyObject *detail_parts[MAX_KINDS]; /* per event kind: {detail: (head, rest)} */
    int64_t offset;        /* agent clock -> wall clock */
    uint64_t mix64, salt64;
    unsigned __int128 mix128, salt128;
    int64_t state_failed, flag_start_unknown;
} Writer;

/* -- an output buffer ------------------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
    char local[2048];
} Buffer;

static void
buffer_init(Buffer *b)
{
    b->data = b->local;
    b->len = 0;
    b->cap = sizeof b->local;
}

static void
buffer_free(Buffer *b)
{
    if (b->data != b->local) {
        PyMem_Free(b->data);
    }
}

static int
reserve(Buffer *b, size_t more)
{
    if (b->len + more <= b->cap) {
        return 0;
    }
    size_t cap = b->cap * 2 > b->len + more ? b->cap * 2 : b->len + more;
    char *data = PyMem_Malloc(cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(data, b->data, b->len);
    buffer_free(b);
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
put_bytes(Buffer *b, const char *data, size_t size)
{
    if (reserve(b, size) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, data, size);
    b->len += size;
    return 0;
}

static inline int
put_piece(Buffer *b, Piece piece)
{
    return put_bytes(b, piece.data, (size_t)piece.size);
}

static size_t
varint_size(uint64_t value)
{
    size_t size = 1;
    while (value > 0x7F) {
        value >>= 7;
        size++;
    }
    return size;
}

static int
put_varint(Buffer *b, uint64_t value)
{
    if (reserve(b, 10) < 0) {
        return -1;
    }
    while (value > 0x7F) {
        b->data[b->len++] = (char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    b->data[b->len++] = (char)value;
    return 0;
}

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "fixed64 fields are copied as is");

static int
put_fixed64(Buffer *b, uint64_t value)
{
    if (reserve(b, 8) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, &value, 8); /* little-endian, as struct's "<Q" and "<d" */
    b->len += 8;
    return 0;
}

/* int.to_bytes(size), big-endian, of an id of 8 or 16 bytes. */
static int
put_big_endian(Buffer *b, unsigned __int128 value, int size)
{
    if (reserve(b, (size_t)size) < 0) {
        return -1;
    }
    uint64_t high = __builtin_bswap64((uint64_t)(value >> 64));
    uint64_t low = __builtin_bswap64((uint64_t)value);
    if (size == 16) {
        memcpy(b->data + b->len, &high, 8);
        b->len += 8;
    }
    memcpy(b->data + b->len, &low, 8);
    b->len += 8;
    return 0;
}

/* -- reading a record: 1 read, 0 not for us (Python takes the record), -1 error ---------- */

static int
read_int(PyObject *value, int64_t *out)
{
    if (!PyLong_CheckExact(value)) {
        return 0;
    }
    int overflow;
    long long read = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        return 0;
    }
    if (read == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = read;
    return 1;
}

/* otlp_fields.attribute_field(_ATTRIBUTE, key, value) of an int64 value: KeyValue{key,
 * value: AnyValue{int_value}}; `key` is the key's field, serialized by Python. */
static int
put_int_attribute(Writer *w, Buffer *b, Piece key, int64_t value)
{
    Piece *p = w->pieces;
    uint64_t raw = (uint64_t)value; /* a negative int64 as its two's complement */
    size_t any = (size_t)p[P_int_value].size + varint_size(raw);
    size_t kv = (size_t)key.size + (size_t)p[P_value].size + varint_size(any) + any;
    return put_piece(b, p[P_attribute]) < 0 || put_varint(b, kv) < 0 || put_piece(b, key) < 0
                   || put_piece(b, p[P_value]) < 0 || put_varint(b, any) < 0
                   || put_piece(b, p[P_int_value]) < 0 || put_varint(b, raw) < 0
               ? -1
               : 0;
}

static int
put_str_attribute(Writer *w, Buffer *b, Piece key, const char *text, Py_ssize_t size)
{
    Piece *p = w->pieces;
    size_t any = (size_t)p[P_string_value].size + varint_size((uint64_t)size) + (size_t)size;
    size_t kv = (size_t)key.size + (size_t)p[P_value].size + varint_size(any) + any;
    return put_piece(b, p[P_attribute]) < 0 || put_varint(b, kv) < 0 || put_piece(b, key) < 0
                   || put_piece(b, p[P_value]) < 0 || put_varint(b, any) < 0
                   || put_piece(b, p[P_string_value]) < 0 || put_varint(b, (uint64_t)size) < 0
                   || put_bytes(b, text, (size_t)size) < 0
               ? -1
               : 0;
}

/* spans.to_ms: (ns + 500) // 1000 / 1000, exact while the quotient fits a double's
 * mantissa (Python's int division is then the same float division). */
static int
to_ms(int64_t ns, double *out)
{
    int64_t shifted;
    if (__builtin_add_overflow(ns, 500, &shifted)) {
        return 0;
    }
    int64_t q = shifted / 1000;
    if (shifted % 1000 != 0 && shifted < 0) {
        q -= 1; /* floor, as Python's // */
    }
    if (q >= MAX_EXACT_DOUBLE || q <= -MAX_EXACT_DOUBLE) {
        return 0;
    }
    *out = (double)q / 1000.0;
    return 1;
}

static int
put_double(Writer *w, Buffer *b, int head, double value)
{
    uint64_t raw;
    memcpy(&raw, &value, sizeof raw);
    return put_piece(b, w->pieces[head]) < 0 || put_fixed64(b, raw) < 0 ? -1 : 0;
}

/* (head, rest) of an event without exception: cached per kind and detail (no object made
 * per event), else otlp_encoder._event_parts. */
static int
event_parts(Writer *w, PyObject *kind, PyObject *detail, Piece *head, Piece *rest)
{
    int64_t k;
    if (read_int(kind, &k) <= 0 || k < 0 || k >= MAX_KINDS) {
        PyErr_Clear();
        return 0;
    }
    PyObject *parts = NULL; /* borrowed */
    if (detail == Py_None) {
        parts = w->none_parts[k];
    }
    else if (w->detail_parts[k] != NULL) {
        parts = PyDict_GetItemWithError(w->detail_parts[k], detail);
        if (parts == NULL && PyErr_Occurred()) { /* an unhashable detail */
            PyErr_Clear();
            return 0;
        }
    }
    if (parts == NULL) {
        PyObject *made = PyObject_CallFunctionObjArgs(w->event_parts, kind, detail, NULL);
        if (made == NULL || !PyTuple_Check(made) || PyTuple_Size(made) != 2
            || !PyBytes_Check(PyTuple_GetItem(made, 0)) || !PyBytes_Check(PyTuple_GetItem(made, 1))) {
            PyErr_Clear(); /* an unknown kind: Python says what is wrong with it */
            Py_XDECREF(made);
            return 0;
        }
        if (detail == Py_None) {
            w->none_parts[k] = made; /* owned */
        }
        else {
            if (w->detail_parts[k] == NULL && (w->detail_parts[k] = PyDict_New()) == NULL) {
                Py_DECREF(made);
                return -1;
            }
            /* Details name tasks, which need not repeat: past a bound, start again. */
            if (PyDict_Size(w->detail_parts[k]) >= MAX_EVENT_PARTS) {
                PyDict_Clear(w->detail_parts[k]);
            }
            int stored = PyDict_SetItem(w->detail_parts[k], detail, made);
            Py_DECREF(made); /* the cache holds it */
            if (stored < 0) {
                PyErr_Clear(); /* unhashable after all */
                return 0;
            }
        }
        parts = made;
    }
    PyObject *h = PyTuple_GetItem(parts, 0), *r = PyTuple_GetItem(parts, 1);
    head->data = PyBytes_AsString(h);
    head->size = PyBytes_Size(h);
    rest->data = PyBytes_AsString(r);
    rest->size = PyBytes_Size(r);
    return 1;
}

static int
put_events(Writer *w, Buffer *b, PyObject *events)
{
    Py_ssize_t count = PyTuple_Size(events);
    if (count < 0 || count % 3 != 0) {
        PyErr_Clear();
        return 0;
    }
    for (Py_ssize_t i = 0; i < count; i += 3) {
        int64_t t, at;
        int found = read_int(PyTuple_GetItem(events, i + 1), &t);
        if (found <= 0) {
            return found;
        }
        if (__builtin_add_overflow(t, w->offset, &at) || at < 0) {
            return 0;
        }
        Piece head, rest;
        found = event_parts(w, PyTuple_GetItem(events, i), PyTuple_GetItem(events, i + 2), &head,
                            &rest);
        if (found <= 0) {
            return found;
        }
        if (put_piece(b, head) < 0 || put_fixed64(b, (uint64_t)at) < 0 || put_piece(b, rest) < 0) {
            return -1;
        }
    }
    return 1;
}

static inline uint64_t
span_id(Writer *w, int64_t local)
{
    uint64_t id = ((uint64_t)local * w->mix64) ^ w->salt64; /* session.span_id, mod 2**64 */
    return id ? id : 1;
}

/* One record as a `ScopeSpans.spans` field, in `out` (emptied first). */
static int
write_span(Writer *w, PyObject *record, Buffer *body, Buffer *out)
{
    if (!PyTuple_CheckExact(record) || PyTuple_Size(record) != R_FIELDS) {
        return 0;
    }
    PyObject *const_none[] = {
        PyTuple_GetItem(record, R_ERROR), PyTuple_GetItem(record, R_LINK),
        PyTuple_GetItem(record, R_REMOTE)};
    for (size_t i = 0; i < sizeof const_none / sizeof const_none[0]; i++) {
        if (const_none[i] != Py_None) {
            return 0;
        }
    }
    PyObject *captured = PyTuple_GetItem(record, R_ATTRS);
    if (captured != Py_None && !(PyTuple_CheckExact(captured) && PyTuple_Size(captured) == 0)) {
        return 0;
    }
    int64_t v[R_FIELDS];
    static const int INTS[] = {R_ID, R_PARENT, R_TRACE, R_TASK, R_CODE, R_THREAD, R_START, R_END,
                               R_STATE, R_POLLS, R_BUSY, R_EVENTS_DROPPED, R_PARENT_TASK, R_FLAGS};
    for (size_t i = 0; i < sizeof INTS / sizeof INTS[0]; i++) {
        int found = read_int(PyTuple_GetItem(record, INTS[i]), &v[INTS[i]]);
        if (found <= 0) {
            return found;
        }
    }
    if (v[R_STATE] == w->state_failed) {
        return 0;
    }
    /* The function: simple, and built from the session's CodeInfo of now. */
    PyObject *code_id = PyTuple_GetItem(record, R_CODE);
    PyObject *function = PyDict_GetItemWithError(w->functions, code_id);
    PyObject *info = function != NULL ? PyDict_GetItemWithError(w->codes, code_id) : NULL;
    if (info == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_Check(function) || PyTuple_Size(function) != 2
        || PyTuple_GetItem(function, 0) != info || !PyBytes_Check(PyTuple_GetItem(function, 1))) {
        return 0; /* not built yet for the session's CodeInfo of now: Python builds it */
    }
    PyObject *constants = PyTuple_GetItem(function, 1);
    PyObject *state_field = PyDict_GetItemWithError(w->states, PyTuple_GetItem(record, R_STATE));
    if (state_field == NULL || !PyBytes_Check(state_field)) {
        return PyErr_Occurred() ? -1 : 0;
    }
    PyObject *events = PyTuple_GetItem(record, R_EVENTS);
    PyObject *task_name = PyTuple_GetItem(record, R_TASK_NAME);
    if (!PyTuple_CheckExact(events)
        || (task_name != Py_None && !PyUnicode_CheckExact(task_name) && !PyLong_CheckExact(task_name))) {
        return 0;
    }
    int64_t start, end;
    if (__builtin_add_overflow(v[R_START], w->offset, &start) || start < 0
        || __builtin_add_overflow(v[R_END], w->offset, &end) || end < 0) {
        return 0;
    }
    int64_t duration_ns, waiting_ns;
    if (__builtin_sub_overflow(end, start, &duration_ns)) {
        return 0;
    }
    duration_ns = duration_ns > 0 ? duration_ns : 0;
    if (__builtin_sub_overflow(duration_ns, v[R_BUSY], &waiting_ns)) {
        return 0;
    }
    waiting_ns = waiting_ns > 0 ? waiting_ns : 0;
    double duration, busy, waiting;
    if (!to_ms(duration_ns, &duration) || !to_ms(v[R_BUSY], &busy) || !to_ms(waiting_ns, &waiting)) {
        return 0;
    }
    Piece *p = w->pieces;
    unsigned __int128 trace = (unsigned __int128)(__int128)v[R_TRACE] * w->mix128 ^ w->salt128;
    body->len = 0;
    if (put_piece(body, p[P_trace_id]) < 0 || put_big_endian(body, trace ? trace : 1, 16) < 0
        || put_piece(body, p[P_span_id]) < 0 || put_big_endian(body, span_id(w, v[R_ID]), 8) < 0
        || (v[R_PARENT] && (put_piece(body, p[P_parent_id]) < 0
                            || put_big_endian(body, span_id(w, v[R_PARENT]), 8) < 0))
        || put_piece(body, p[P_start]) < 0 || put_fixed64(body, (uint64_t)start) < 0
        || put_piece(body, p[P_end]) < 0 || put_fixed64(body, (uint64_t)end) < 0
        || put_bytes(body, PyBytes_AsString(constants), (size_t)PyBytes_Size(constants)) < 0
        || put_int_attribute(w, body, p[P_thread_key], v[R_THREAD]) < 0
        || put_int_attribute(w, body, p[P_task_key], v[R_TASK]) < 0
        || put_bytes(body, PyBytes_AsString(state_field), (size_t)PyBytes_Size(state_field)) < 0
        || put_int_attribute(w, body, p[P_polls_key], v[R_POLLS]) < 0
        || put_double(w, body, P_duration, duration) < 0 || put_double(w, body, P_busy, busy) < 0
        || put_double(w, body, P_waiting, waiting) < 0
        || (v[R_PARENT_TASK] && put_int_attribute(w, body, p[P_parent_task_key], v[R_PARENT_TASK]) < 0)) {
        return -1;
    }
    if (task_name != Py_None) {
        Py_ssize_t size;
        char number[32]; /* a default name the agent sent as its N: Task-N (wire.task_name) */
        const char *text = number;
        if (PyLong_CheckExact(task_name)) {
            int overflow;
            long long n = PyLong_AsLongLongAndOverflow(task_name, &overflow);
            if (overflow || (n == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return 0;
            }
            size = snprintf(number, sizeof number, "Task-%lld", n);
        }
        else if ((text = PyUnicode_AsUTF8AndSize(task_name, &size)) == NULL) {
            PyErr_Clear(); /* a lone surrogate: Python says so */
            return 0;
        }
        if (put_str_attribute(w, body, p[P_task_name_key], text, size) < 0) {
            return -1;
        }
    }
    if (((v[R_FLAGS] & w->flag_start_unknown) && put_piece(body, p[P_start_unknown]) < 0)
        || (v[R_EVENTS_DROPPED]
            && put_int_attribute(w, body, p[P_events_dropped_key], v[R_EVENTS_DROPPED]) < 0)) {
        return -1;
    }
    int written = put_events(w, body, events);
    if (written <= 0) {
        return written;
    }
    out->len = 0;
    if (put_piece(body, p[P_status_unset]) < 0 || put_piece(body, p[P_flags_local]) < 0
        || put_piece(out, p[P_spans]) < 0 || put_varint(out, body->len) < 0
        || put_bytes(out, body->data, body->len) < 0) {
        return -1;
    }
    return 1;
}

PyDoc_STRVAR(encode_doc,
             "encode(records)\n--\n\nOne `ScopeSpans.spans` field per record, or None for a "
             "record left to Python.");

static PyObject *
Writer_encode(Writer *w, PyObject *records)
{
    PyObject *sequence = PySequence_Fast(records, "records must be a sequence");
    if (sequence == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Size(sequence);
    PyObject *result = count >= 0 ? PyList_New(count) : NULL;
    Buffer body, out;
    buffer_init(&body);
    buffer_init(&out);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        PyObject *record = PySequence_GetItem(sequence, i);
        int written = record != NULL ? write_span(w, record, &body, &out) : -1;
        Py_XDECREF(record);
        PyObject *span = written > 0    ? PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len)
                         : written == 0 ? Py_NewRef(Py_None)
                                        : NULL;
        if (span == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SetItem(result, i, span);
    }
    buffer_free(&body);
    buffer_free(&out);
    Py_DECREF(sequence);
    return result;
}

/* -- the type ------------------------------------------------------------------------------ */

static int
read_u64(PyObject *value, uint64_t *out)
{
    *out = PyLong_AsUnsignedLongLongMask(value);
    return *out == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

static int
read_u128(PyObject *value, unsigned __int128 *out)
{
    /* Two halves: (value >> 64) and (value & (2**64 - 1)). */
    PyObject *sixty_four = PyLong_FromLong(64);
    PyObject *high = sixty_four != NULL ? PyNumber_Rshift(value, sixty_four) : NULL;
    uint64_t hi = 0, lo = 0;
    int failed = high == NULL || read_u64(high, &hi) < 0 || read_u64(value, &lo) < 0;
    Py_XDECREF(sixty_four);
    Py_XDECREF(high);
    *out = (unsigned __int128)hi << 64 | lo;
    return failed ? -1 : 0;
}

static int layout_checked; /* check_layout passed once: the R_ positions are wire.py's */

static int
check_layout(PyObject *layout)
{
    static const char *NAMES[] = {
        "SPAN_ID", "SPAN_PARENT", "SPAN_TRACE", "SPAN_TASK", "SPAN_CODE", "SPAN_THREAD",
        "SPAN_START", "SPAN_END", "SPAN_STATE", "SPAN_POLLS", "SPAN_BUSY", "SPAN_EVENTS",
        "SPAN_EVENTS_DROPPED", "SPAN_ERROR", "SPAN_TASK_NAME", "SPAN_PARENT_TASK", "SPAN_LINK",
        "SPAN_REMOTE_PARENT", "SPAN_FLAGS", "SPAN_ATTRS", "SPAN_FIELDS"};
    for (int i = 0; i <= R_FIELDS; i++) {
        PyObject *value = PyDict_GetItemString(layout, NAMES[i]);
        if (value == NULL || PyLong_AsLong(value) != i) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "wire layout: %s is not %d here", NAMES[i], i);
            return -1;
        }
    }
    layout_checked = 1;
    return 0;
}

/* -- wire._check_span, for a whole SPANS body ----------------------------------------- */

static inline int
is_pair_or_none(PyObject *value, Py_ssize_t size)
{
    return value == Py_None || (PyTuple_CheckExact(value) && PyTuple_Size(value) == size);
}

/* 1 if `span` has the shape wire._check_span accepts, 0 if not, -1 on error. */
static int
span_ok(PyObject *span, PyObject *state_names)
{
    if (!PyTuple_Check(span) || PyTuple_Size(span) != R_FIELDS) {
        return 0;
    }
    static const int INTS[] = {R_ID, R_PARENT, R_TRACE, R_TASK, R_CODE, R_START, R_END};
    for (size_t i = 0; i < sizeof INTS / sizeof INTS[0]; i++) {
        if (!PyLong_CheckExact(PyTuple_GetItem(span, INTS[i]))) {
            return 0;
        }
    }
    PyObject *state = PyTuple_GetItem(span, R_STATE);
    if (!PyLong_CheckExact(state)) {
        return 0;
    }
    int known = PyDict_Contains(state_names, state);
    if (known <= 0) {
        return known;
    }
    PyObject *events = PyTuple_GetItem(span, R_EVENTS);
    PyObject *error = PyTuple_GetItem(span, R_ERROR);
    PyObject *attrs = PyTuple_GetItem(span, R_ATTRS);
    return PyTuple_CheckExact(events) && PyTuple_Size(events) % 3 == 0
           && (error == Py_None || (PyTuple_Check(error) && PyTuple_Size(error) == 3))
           && is_pair_or_none(PyTuple_GetItem(span, R_LINK), 2)
           && is_pair_or_none(PyTuple_GetItem(span, R_REMOTE), 2)
           && (attrs == Py_None || PyTuple_CheckExact(attrs));
}

PyDoc_STRVAR(check_spans_doc,
             "check_spans(state_names, spans)\n--\n\nwire._check_span over a SPANS body: the "
             "index of the first span it would refuse, or -1.");

static PyObject *
check_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "check_spans(state_names: dict, spans: list)");
        return NULL;
    }
    if (!layout_checked) {
        PyErr_SetString(PyExc_RuntimeError, "check_spans before check_layout");
        return NULL;
    }
    Py_ssize_t count = PyList_Size(args[1]);
    for (Py_ssize_t i = 0; i < count; i++) {
        int ok = span_ok(PyList_GetItem(args[1], i), args[0]);
        if (ok < 0) {
            return NULL;
        }
        if (!ok) {
            return PyLong_FromSsize_t(i);
        }
    }
    (void)module;
    return PyLong_FromLong(-1);
}

PyDoc_STRVAR(check_layout_doc,
             "check_layout(layout)\n--\n\nRaise ValueError unless wire's SPAN_* positions "
             "are those compiled in.");

static PyObject *
check_layout_py(PyObject *module, PyObject *layout)
{
    (void)module;
    if (!PyDict_Check(layout)) {
        PyErr_SetString(PyExc_TypeError, "check_layout(layout: dict)");
        return NULL;
    }
    return check_layout(layout) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyMethodDef module_methods[] = {
    {"check_spans", (PyCFunction)(void (*)(void))check_spans, METH_FASTCALL, check_spans_doc},
    {"check_layout", (PyCFunction)check_layout_py, METH_O, check_layout_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *pieces, *layout, *states, *codes, *functions, *parts, *ids;
    long long offset, state_failed, flag_start_unknown;
    static char *keywords[] = {"pieces", "layout", "states", "codes", "functions", "event_parts",
                               "ids", "offset", "state_failed", "flag_start_unknown", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!O!O!OO!LLL:SpanWriter", keywords,
                                     &PyDict_Type, &pieces, &PyDict_Type, &layout, &PyDict_Type,
                                     &states, &PyDict_Type, &codes, &PyDict_Type, &functions,
                                     &parts, &PyTuple_Type, &ids, &offset, &state_failed,
                                     &flag_start_unknown)) {
        return NULL;
    }
    if (check_layout(layout) < 0) {
        return NULL;
    }
    if (PyTuple_Size(ids) != 4) {
        PyErr_SetString(PyExc_ValueError, "ids: (mix64, salt64, mix128, salt128)");
        return NULL;
    }
    Writer *w = (Writer *)PyType_GenericAlloc(type, 0);
    if (w == NULL) {
        return NULL;
    }
    /* All the pieces in one bytes object, each a slice of it. */
    PyObject *joined = PyBytes_FromStringAndSize(NULL, 0);
    Py_ssize_t starts[P_COUNT];
    for (int i = 0; joined != NULL && i < P_COUNT; i++) {
        PyObject *piece = PyDict_GetItemString(pieces, PIECE_NAMES[i]);
        if (piece == NULL || !PyBytes_Check(piece)) {
            PyErr_Format(PyExc_KeyError, "pieces: %s (bytes) missing", PIECE_NAMES[i]);
            Py_CLEAR(joined);
            break;
        }
        starts[i] = PyBytes_Size(joined);
        w->pieces[i].size = PyBytes_Size(piece);
        PyBytes_Concat(&joined, piece);
    }
    if (joined == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    w->pieces_owner = joined;
    for (int i = 0; i < P_COUNT; i++) {
        w->pieces[i].data = PyBytes_AsString(joined) + starts[i];
    }
    w->states = Py_NewRef(states);
    w->codes = Py_NewRef(codes);
    w->functions = Py_NewRef(functions);
    w->event_parts = Py_NewRef(parts);
    w->offset = offset;
    w->state_failed = state_failed;
    w->flag_start_unknown = flag_start_unknown;
    if (read_u64(PyTuple_GetItem(ids, 0), &w->mix64) < 0
        || read_u64(PyTuple_GetItem(ids, 1), &w->salt64) < 0
        || read_u128(PyTuple_GetItem(ids, 2), &w->mix128) < 0
        || read_u128(PyTuple_GetItem(ids, 3), &w->salt128) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static int
Writer_traverse(Writer *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE((PyObject *)w));
    Py_VISIT(w->states);
    Py_VISIT(w->codes);
    Py_VISIT(w->functions);
    Py_VISIT(w->event_parts);
    for (int k = 0; k < MAX_KINDS; k++) {
        Py_VISIT(w->none_parts[k]);
        Py_VISIT(w->detail_parts[k]);
    }
    return 0;
}

static int
Writer_clear(Writer *w)
{
    Py_CLEAR(w->states);
    Py_CLEAR(w->codes);
    Py_CLEAR(w->functions);
    Py_CLEAR(w->event_parts);
    for (int k = 0; k < MAX_KINDS; k++) {
        Py_CLEAR(w->none_parts[k]);
        Py_CLEAR(w->detail_parts[k]);
    }
    return 0;
}

static void
Writer_dealloc(Writer *w)
{
    PyTypeObject *type = Py_TYPE((PyObject *)w);
    PyObject_GC_UnTrack(w);
    Writer_clear(w);
    Py_CLEAR(w->pieces_owner);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(w);
    Py_DECREF(type);
}

static PyMethodDef Writer_methods[] = {
    {"encode", (PyCFunction)Writer_encode, METH_O, encode_doc},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Writer_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("SpanWriter(...): SessionEncoder.encode_span's common case.")},
    {Py_tp_new, Writer_new},
    {Py_tp_dealloc, Writer_dealloc},
    {Py_tp_traverse, Writer_traverse},
    {Py_tp_clear, Writer_clear},
    {Py_tp_methods, Writer_methods},
    {0, NULL},
};

static PyType_Spec Writer_spec = {
    .name = "_encoder.SpanWriter",
    .basicsize = sizeof(Writer),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Writer_slots,
};

static int
exec_module(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &Writer_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int failed = PyModule_AddObjectRef(module, "SpanWriter", type) < 0;
    Py_DECREF(type);
    return failed ? -1 : PyModule_AddIntConstant(module, "ABI_VERSION", ABI_VERSION);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_encoder",
    .m_doc = "The collector's compiled span writer (collector/otlp_encoder.py).",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
};

PyMODINIT_FUNC
PyInit__encoder(void)
{
    return PyModuleDef_Init(&module_def);
}
