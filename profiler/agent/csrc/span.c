/* The Span object (accel.h): a span's fields in C, and the list protocol Python uses on
 * it (adoption, in_flight, the tests, to_wire when marshal.c leaves a span to Python).
 */
#include <string.h>

#include "accel.h"

/* What each spans.py position holds. */
AI_INTERNAL const unsigned char FIELD_KINDS[SPAN_LEN] = {
    [ID] = KIND_INT, [PARENT_ID] = KIND_INT, [TRACE] = KIND_INT, [TASK] = KIND_INT,
    [CODE] = KIND_INT, [THREAD] = KIND_INT, [START] = KIND_INT, [END] = KIND_INT,
    [STATE] = KIND_INT, [POLLS] = KIND_INT, [BUSY] = KIND_INT, [EVENTS] = KIND_EVENTS,
    [EVENTS_DROPPED] = KIND_INT, [ERROR] = KIND_OBJECT, [TASK_NAME] = KIND_OBJECT,
    [PARENT_TASK] = KIND_INT, [LINK] = KIND_LINK, [REMOTE] = KIND_OBJECT,
    [FLAGS] = KIND_INT, [ATTRS] = KIND_OBJECT, [RESUMED] = KIND_INT, [PARENT] = KIND_OBJECT,
    [CHILD] = KIND_OBJECT, [SAMPLED] = KIND_BOOL, [TASK_INFO] = KIND_OBJECT,
    [BLOCKED_AT] = KIND_INT,
};

/* The object positions, for freeing. */
static const int OBJECT_FIELDS[] = {ERROR, TASK_NAME, REMOTE, ATTRS, PARENT, CHILD, TASK_INFO};
#define OBJECT_COUNT ((int)(sizeof(OBJECT_FIELDS) / sizeof(OBJECT_FIELDS[0])))

/* A span as spans.new_span makes it before its own fields are stored: a running span with
 * one poll, its ints 0 and its objects None; room for `room` events in the allocation. */
static PyObject *
alloc_span(PyTypeObject *type, int room)
{
    Span *span = PyObject_Malloc(sizeof(Span) + (size_t)room * sizeof(Event));
    if (span == NULL) {
        return PyErr_NoMemory();
    }
    PyObject_InitVar((PyVarObject *)span, type, room); /* a reference to the type too */
    memset(span->f, 0, sizeof(span->f));
    for (int i = 0; i < OBJECT_COUNT; i++) {
        span->f[OBJECT_FIELDS[i]].o = NONE;
    }
    span->f[STATE].i = STATE_RUNNING;
    span->f[POLLS].i = 1;
    span->events = span->room;
    span->nevents = 0;
    span->capacity = room;
    span->has_events = 0;
    return (PyObject *)span;
}

/* A new span (as alloc_span), or NULL; a sampled one with room for its first events. */
AI_INTERNAL PyObject *
span_new(Hooks *h, int sampled)
{
    return alloc_span((PyTypeObject *)h->span_type, sampled ? EVENT_ROOM : 0);
}

/* span.f[field] = value, an object field; `value` is a new reference, consumed. */
AI_INTERNAL void
span_set(Span *span, int field, PyObject *value)
{
    PyObject *old = span->f[field].o;
    span->f[field].o = value;
    drop_ref(old);
}

static void
events_clear(Span *span)
{
    for (int32_t i = 0; i < span->nevents; i++) {
        drop_ref(span->events[i].detail);
    }
    if (span->events != span->room) {
        PyMem_Free(span->events);
    }
    span->events = span->room;
    span->nevents = 0;
    span->capacity = (int32_t)Py_SIZE((PyObject *)span);
}

/* Append an event (`detail` borrowed); past the span's room, to an array of its own. */
AI_INTERNAL int
span_event(Span *span, int kind, int64_t when, PyObject *detail)
{
    if (span->nevents == span->capacity) {
        int32_t capacity = span->capacity ? span->capacity * 2 : EVENT_ROOM;
        int in_room = span->events == span->room;
        Event *grown = PyMem_Realloc(in_room ? NULL : span->events,
                                     (size_t)capacity * sizeof(Event));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (in_room && span->nevents) {
            memcpy(grown, span->room, (size_t)span->nevents * sizeof(Event));
        }
        span->events = grown;
        span->capacity = capacity;
    }
    span->events[span->nevents++] = (Event){when, new_ref(detail), kind};
    return 0;
}

/* -- the list protocol ------------------------------------------------------------------ */

static PyObject *
events_list(Span *span)
{
    if (!span->has_events) {
        Py_RETURN_NONE;
    }
    PyObject *list = PyList_New(3 * (Py_ssize_t)span->nevents);
    for (int32_t i = 0; list != NULL && i < span->nevents; i++) {
        Event *event = &span->events[i];
        PyObject *kind = PyLong_FromLong(event->kind);
        PyObject *when = PyLong_FromLong(event->when);
        if (kind == NULL || when == NULL) {
            Py_XDECREF(kind);
            Py_XDECREF(when);
            Py_CLEAR(list);
            break;
        }
        PyList_SetItem(list, 3 * i, kind);
        PyList_SetItem(list, 3 * i + 1, when);
        PyList_SetItem(list, 3 * i + 2, Py_NewRef(event->detail));
    }
    return list;
}

/* span[EVENTS] = value: None, or a flat list or tuple of (kind, when, detail) triples. */
static int
set_events(Span *span, PyObject *value)
{
    if (value == Py_None) {
        events_clear(span);
        span->has_events = 0;
        return 0;
    }
    PyObject *items = PySequence_Tuple(value);
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t size = PyTuple_Size(items);
    int failed = size % 3 != 0 || size / 3 > INT32_MAX;
    if (failed) {
        PyErr_SetString(PyExc_ValueError, "events: (kind, when, detail) triples");
    }
    for (Py_ssize_t i = 0; !failed && i < size; i += 3) { /* checked before anything changes */
        long kind = PyLong_AsLong(PyTuple_GetItem(items, i));
        long long when = PyLong_AsLongLong(PyTuple_GetItem(items, i + 1));
        failed = (kind == -1 || when == -1) && PyErr_Occurred();
    }
    if (!failed) {
        events_clear(span);
        span->has_events = 1;
    }
    for (Py_ssize_t i = 0; !failed && i < size; i += 3) {
        failed = span_event(span, (int)PyLong_AsLong(PyTuple_GetItem(items, i)),
                            PyLong_AsLongLong(PyTuple_GetItem(items, i + 1)),
                            PyTuple_GetItem(items, i + 2))
                 < 0;
    }
    Py_DECREF(items);
    return failed ? -1 : 0;
}

/* span[LINK] = None, or a (trace, span) pair of ints. */
static int
set_link(Span *span, PyObject *value)
{
    if (value == Py_None) {
        span->f[LINK].i = 0;
        return 0;
    }
    long long trace, span_id;
    if (!PyArg_ParseTuple(value, "LL;a link is None or (trace, span)", &trace, &span_id)) {
        return -1;
    }
    span->link[0] = trace;
    span->link[1] = span_id;
    span->f[LINK].i = 1;
    return 0;
}

static PyObject *
get_field(Span *span, Py_ssize_t field)
{
    switch (FIELD_KINDS[field]) {
    case KIND_INT:
        return PyLong_FromLongLong(span->f[field].i);
    case KIND_BOOL:
        return PyBool_FromLong(span->f[field].i);
    case KIND_EVENTS:
        return events_list(span);
    case KIND_LINK:
        return span->f[LINK].i ? Py_BuildValue("(LL)", (long long)span->link[0],
                                               (long long)span->link[1])
                               : NONE;
    default:
        return Py_NewRef(span->f[field].o);
    }
}

static int
set_field(Span *span, Py_ssize_t field, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "a span's fields cannot be deleted");
        return -1;
    }
    switch (FIELD_KINDS[field]) {
    case KIND_INT: {
        long long number = PyLong_AsLongLong(value);
        if (number == -1 && PyErr_Occurred()) {
            return -1;
        }
        span->f[field].i = number;
        return 0;
    }
    case KIND_BOOL: {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) {
            return -1;
        }
        span->f[field].i = truth;
        return 0;
    }
    case KIND_EVENTS:
        return set_events(span, value);
    case KIND_LINK:
        return set_link(span, value);
    default:
        span_set(span, (int)field, Py_NewRef(value));
        return 0;
    }
}

static Py_ssize_t
Span_length(PyObject *Py_UNUSED(self))
{
    return SPAN_LEN;
}

static PyObject *
Span_item(PyObject *self, Py_ssize_t index)
{
    if (index < 0 || index >= SPAN_LEN) {
        PyErr_SetString(PyExc_IndexError, "span index out of range");
        return NULL;
    }
    return get_field(SPAN(self), index);
}

static PyObject *
Span_subscript(PyObject *self, PyObject *key)
{
    if (PyLong_Check(key)) {
        Py_ssize_t index = PyLong_AsSsize_t(key);
        if (index == -1 && PyErr_Occurred()) {
            return NULL;
        }
        return Span_item(self, index < 0 ? index + SPAN_LEN : index);
    }
    Py_ssize_t start, stop, step;
    if (!PySlice_Check(key) || PySlice_Unpack(key, &start, &stop, &step) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "span indices are ints or slices");
        }
        return NULL;
    }
    Py_ssize_t count = PySlice_AdjustIndices(SPAN_LEN, &start, &stop, step);
    PyObject *list = PyList_New(count);
    for (Py_ssize_t i = 0; list != NULL && i < count; i++) {
        PyObject *value = get_field(SPAN(self), start + i * step);
        if (value == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SetItem(list, i, value);
    }
    return list;
}

static int
Span_ass_subscript(PyObject *self, PyObject *key, PyObject *value)
{
    Py_ssize_t index = PyLong_Check(key) ? PyLong_AsSsize_t(key) : -1;
    if (index == -1 && PyErr_Occurred()) {
        return -1;
    }
    index = index < 0 && PyLong_Check(key) ? index + SPAN_LEN : index;
    if (index < 0 || index >= SPAN_LEN) {
        PyErr_SetString(PyExc_IndexError, "span assignment: an int index in range");
        return -1;
    }
    return set_field(SPAN(self), index, value);
}

/* Span(fields): a span from a spans.new_span list (for what Python opens: adoption). */
static PyObject *
Span_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *fields;
    static char *keywords[] = {"fields", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Span", keywords, &fields)) {
        return NULL;
    }
    PyObject *items = PySequence_Tuple(fields);
    if (items == NULL) {
        return NULL;
    }
    if (PyTuple_Size(items) != SPAN_LEN) {
        Py_DECREF(items);
        return PyErr_Format(PyExc_ValueError, "a span has %d fields", SPAN_LEN);
    }
    PyObject *span = alloc_span(type, 0);
    for (Py_ssize_t i = 0; span != NULL && i < SPAN_LEN; i++) {
        if (set_field(SPAN(span), i, PyTuple_GetItem(items, i)) < 0) {
            Py_CLEAR(span);
        }
    }
    Py_DECREF(items);
    return span;
}

/* -- freeing ------------------------------------------------------------------------------ */

/* Freeing a span can free its parent, its TaskInfo and through that the span that created
 * the task, and so on: a long line of tasks, each made by the one before, would nest as
 * deep in C. Past DEALLOC_DEPTH, spans wait in a list (threaded through f[ID]) and are
 * freed by the outermost call, as CPython's trashcan does for its own containers. All of
 * this runs with the GIL held. */
#define DEALLOC_DEPTH 50
static int dealloc_depth;
static Span *dealloc_later;

static void
span_free(Span *span)
{
    PyTypeObject *type = Py_TYPE((PyObject *)span);
    for (int i = 0; i < OBJECT_COUNT; i++) {
        drop_ref(span->f[OBJECT_FIELDS[i]].o);
    }
    events_clear(span);
    PyObject_Free(span);
    Py_DECREF(type);
}

static void
Span_dealloc(PyObject *self)
{
    Span *span = SPAN(self);
    if (dealloc_depth >= DEALLOC_DEPTH) {
        span->f[ID].o = (PyObject *)dealloc_later;
        dealloc_later = span;
        return;
    }
    dealloc_depth++;
    span_free(span);
    if (dealloc_depth == 1) {
        while (dealloc_later != NULL) {
            Span *next = dealloc_later;
            dealloc_later = (Span *)next->f[ID].o;
            span_free(next);
        }
    }
    dealloc_depth--;
}

PyDoc_STRVAR(Span_doc,
             "Span(fields)\n--\n\nA span: spans.py's 26-item list, compiled. Read and written "
             "by position like the list.");

static PyType_Slot Span_slots[] = {
    {Py_tp_doc, (void *)Span_doc},
    {Py_tp_new, Span_new},
    {Py_tp_dealloc, Span_dealloc},
    {Py_sq_length, Span_length},
    {Py_sq_item, Span_item},
    {Py_mp_length, Span_length},
    {Py_mp_subscript, Span_subscript},
    {Py_mp_ass_subscript, Span_ass_subscript},
    {0, NULL},
};

AI_INTERNAL PyType_Spec Span_spec = {
    .name = "_accel.Span",
    .basicsize = sizeof(Span),
    .itemsize = sizeof(Event),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Span_slots,
};
