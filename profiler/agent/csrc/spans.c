/* Span life: open, poll, suspend, finish (tracker.py: on_start's inlined child case,
 * _open, _sample, _finish, _record_poll, _describe_awaited; meters.py: span_finished).
 *
 * Spans are the 26-item lists of spans.py. Times are one int object shared by START,
 * RESUMED and the first poll, as in Python.
 */
#include "accel.h"

static const int STATE_EVENTS[] = {0, 4, 5, 6}; /* completed, failed, cancelled events */

AI_INTERNAL int
drop(Hooks *h, PyObject *reason)
{
    PyObject *result = call_method(h, NAME(h, _drop), reason, NULL);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* Append (kind, when, detail) to a flat event list; `when` and `detail` are borrowed. */
AI_INTERNAL int
append_event_at(PyObject *events, int kind, PyObject *when, PyObject *detail)
{
    PyObject *kind_obj = PyLong_FromLong(kind); /* a small int: never allocated */
    int failed = kind_obj == NULL || PyList_Append(events, kind_obj) < 0
                 || PyList_Append(events, when) < 0 || PyList_Append(events, detail) < 0;
    Py_XDECREF(kind_obj);
    return failed ? -1 : 0;
}

AI_INTERNAL int
append_event(PyObject *events, int kind, int64_t when, PyObject *detail)
{
    PyObject *when_obj = PyLong_FromLong(when);
    int failed = when_obj == NULL || append_event_at(events, kind, when_obj, detail) < 0;
    Py_XDECREF(when_obj);
    return failed ? -1 : 0;
}

/* Span lists and their event lists are not tracked by the cyclic GC. A busy app makes tens
 * of thousands a second and the buffer holds them up to a second: tracked, they made the
 * GC's traversals a quarter of the app's CPU (perf, W1). They form no cycle that outlives
 * them: a parent's CHILD is cleared when the child finishes, and what they hold (ints,
 * strings, tuples, TaskInfo, their parent) never points back into a descendant. Reference
 * counting frees them as before; an untracked list only counts as a root to the GC. */
static inline PyObject *
untracked(PyObject *container)
{
    if (container != NULL) {
        PyObject_GC_UnTrack(container);
    }
    return container;
}

/* A new span list holding spans.new_span's constants (a copy of Hooks.template: one C-level
 * copy instead of 26 item stores); the caller stores the rest. */
static inline PyObject *
blank_span(Hooks *h)
{
    return untracked(PyList_GetSlice(h->template, 0, SPAN_LEN));
}

/* new_span's first `poll`: [POLL, t, None], with room for a second event (the `blocked` of
 * nearly every span): made with six items, cut to three, the list keeps its six slots,
 * where appending would have grown it to eight. */
static PyObject *
first_events(PyObject *t)
{
    PyObject *kind = PyLong_FromLong(EVENT_POLL);
    PyObject *events = kind != NULL ? untracked(PyList_New(6)) : NULL;
    if (events == NULL) {
        Py_XDECREF(kind);
        return NULL;
    }
    PyList_SetItem(events, 0, kind);
    PyList_SetItem(events, 1, Py_NewRef(t));
    for (Py_ssize_t i = 2; i < 6; i++) {
        PyList_SetItem(events, i, Py_NewRef(Py_None));
    }
    if (PyList_SetSlice(events, 3, 6, NULL) < 0) {
        Py_DECREF(events);
        return NULL;
    }
    return events;
}

/* (remote[0], 0): the app's trace id on a descendant of the app's own span; or None. */
static PyObject *
remote_below(PyObject *remote)
{
    if (remote == Py_None) {
        return Py_NewRef(Py_None);
    }
    PyObject *trace_id = PySequence_GetItem(remote, 0);
    PyObject *zero = PyLong_FromLong(0);
    PyObject *pair = trace_id != NULL && zero != NULL ? PyTuple_Pack(2, trace_id, zero) : NULL;
    Py_XDECREF(trace_id);
    Py_XDECREF(zero);
    return pair;
}

/* span[ATTRS] = tracker._capture(code_id, frame): a rule's attributes from the arguments. */
static int
capture(Hooks *h, PyObject *span, int64_t code_id, PyObject *frame)
{
    PyObject *code_obj = PyLong_FromLong(code_id);
    if (code_obj == NULL) {
        return -1;
    }
    PyObject *attrs = call_method(h, NAME(h, _capture), code_obj, frame);
    Py_DECREF(code_obj);
    return put(span, ATTRS, attrs);
}

/* The common case of Tracker.on_start: awaited directly by a traced coroutine of the same
 * task. `parent` is borrowed. */
AI_INTERNAL int
open_child(Hooks *h, PyObject *frame, PyObject *parent, int64_t code_id, int code_flags,
           int64_t t)
{
    int sampled = is_true(parent, SAMPLED);
    PyObject *remote = PyList_GetItem(parent, REMOTE);
    if (sampled < 0 || remote == NULL) {
        return -1;
    }
    PyObject *t_obj = PyLong_FromLong(t);
    PyObject *span = t_obj != NULL ? blank_span(h) : NULL;
    int failed = span == NULL || put_int(span, ID, h->next_span_id++) < 0
                 || put(span, PARENT_ID, item_ref(parent, ID)) < 0
                 || put(span, TRACE, item_ref(parent, TRACE)) < 0
                 || put(span, TASK, item_ref(parent, TASK)) < 0 || put_int(span, CODE, code_id) < 0
                 || put(span, THREAD, item_ref(parent, THREAD)) < 0
                 || put_ref(span, START, t_obj) < 0 || put_ref(span, RESUMED, t_obj) < 0
                 || (sampled && put(span, EVENTS, first_events(t_obj)) < 0)
                 || (remote != Py_None && put(span, REMOTE, remote_below(remote)) < 0)
                 || put_ref(span, PARENT, parent) < 0
                 || put(span, SAMPLED, item_ref(parent, SAMPLED)) < 0
                 || put_ref(parent, CHILD, span) < 0 || PyDict_SetItem(h->open, frame, span) < 0;
    h->running += !failed; /* in `open`, running */
    failed = failed
             || (sampled && (code_flags & AI_CODE_CAPTURE) && capture(h, span, code_id, frame) < 0);
    Py_XDECREF(t_obj);
    Py_XDECREF(span);
    return failed ? -1 : 0;
}

/* Tracker._sample: is a trace rooted in this code recorded? 1, 0 or -1. */
static int
sample(Hooks *h, int64_t code_id, int code_flags)
{
    PyObject *result;
    if (code_flags & AI_CODE_RATE) { /* a rule's own rate */
        PyObject *code_obj = PyLong_FromLong(code_id);
        if (code_obj == NULL) {
            return -1;
        }
        result = call_method(h, NAME(h, _sample), code_obj, NULL);
        Py_DECREF(code_obj);
        if (result == NULL) {
            return -1;
        }
        int sampled = PyObject_IsTrue(result);
        Py_DECREF(result);
        return sampled;
    }
    if (h->ratio >= 1.0) {
        return 1;
    }
    result = PyObject_CallNoArgs(h->random); /* the app's random module, as in Python */
    if (result == NULL) {
        return -1;
    }
    double draw = PyFloat_AsDouble(result);
    Py_DECREF(result);
    if (draw == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return draw < h->ratio;
}

/* _app_otel_parent(), asked only once the app has imported OpenTelemetry. */
static PyObject *
app_otel_parent(Hooks *h)
{
    PyObject *found = PyDict_GetItemWithError(PyImport_GetModuleDict(), h->s_otel_module);
    if (found == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    return PyObject_CallNoArgs(h->otel_parent);
}

/* Where a root's trace comes from: (trace, parent id, link, remote, sampled), new refs. */
typedef struct {
    PyObject *trace, *parent_id, *link, *remote, *sampled;
} Lineage;

static void
lineage_clear(Lineage *lineage)
{
    Py_CLEAR(lineage->trace);
    Py_CLEAR(lineage->parent_id);
    Py_CLEAR(lineage->link);
    Py_CLEAR(lineage->remote);
    Py_CLEAR(lineage->sampled);
}

/* The trace part of Tracker._open. */
static int
lineage(Hooks *h, PyObject *parent, PyObject *span_id, int64_t code_id, int code_flags,
        int64_t t, Lineage *out)
{
    int64_t parent_start = 0;
    if (parent != Py_None && get_int(parent, START, &parent_start) < 0) {
        return -1;
    }
    if (parent != Py_None && t - parent_start <= h->split_ns) {
        PyObject *parent_remote = PyList_GetItem(parent, REMOTE);
        out->trace = item_ref(parent, TRACE);
        out->parent_id = item_ref(parent, ID);
        out->sampled = item_ref(parent, SAMPLED);
        out->link = Py_NewRef(Py_None);
        out->remote = parent_remote != NULL ? remote_below(parent_remote) : NULL;
        return out->trace && out->parent_id && out->sampled && out->remote ? 0 : -1;
    }
    /* A root, or a child of a long-lived span (a server loop, a worker): its own trace,
     * linked to where it came from, so no trace grows without end. */
    out->trace = Py_NewRef(span_id); /* the root's own id: one int for both */
    out->parent_id = PyLong_FromLong(0);
    if (parent != Py_None) {
        PyObject *parent_trace = PyList_GetItem(parent, TRACE);
        PyObject *parent_span = PyList_GetItem(parent, ID);
        out->link = parent_trace && parent_span ? PyTuple_Pack(2, parent_trace, parent_span)
                                                : NULL;
    }
    else {
        out->link = Py_NewRef(Py_None);
    }
    if (!out->trace || !out->parent_id || !out->link) {
        return -1;
    }
    PyObject *app = parent == Py_None ? app_otel_parent(h) : Py_NewRef(Py_None);
    if (app == NULL) {
        return -1;
    }
    if (app != Py_None) { /* the app's own OpenTelemetry span: join its trace */
        PyObject *app_trace = PySequence_GetItem(app, 0);
        PyObject *app_span = PySequence_GetItem(app, 1);
        out->remote = app_trace && app_span ? PyTuple_Pack(2, app_trace, app_span) : NULL;
        Py_XDECREF(app_trace);
        Py_XDECREF(app_span);
        if (h->parent_based) {
            out->sampled = PySequence_GetItem(app, 2);
        }
        Py_DECREF(app);
        if (out->remote == NULL || (h->parent_based && out->sampled == NULL)) {
            return -1;
        }
    }
    else {
        Py_DECREF(app);
        out->remote = Py_NewRef(Py_None);
    }
    if (out->sampled == NULL) {
        int decided = sample(h, code_id, code_flags);
        if (decided < 0) {
            return -1;
        }
        out->sampled = Py_NewRef(decided ? Py_True : Py_False);
    }
    return 0;
}

/* The task part of Tracker._open for a span that is not its parent's child in the same
 * task: its task id, thread, and (for a task's first span) the task root flag. */
static int
task_of(Hooks *h, PyObject *info, PyObject **task_id, PyObject **thread, int64_t *flags)
{
    unsigned long ident = PyThread_get_thread_ident();
    if (h->thread_obj == NULL || h->thread_ident != ident) { /* one int per thread, not task */
        h->thread_native = PyThread_get_thread_native_id();
        PyObject *made = PyLong_FromUnsignedLong(h->thread_native);
        if (made == NULL) {
            return -1;
        }
        Py_XDECREF(h->thread_obj);
        h->thread_obj = made;
        h->thread_ident = ident;
    }
    unsigned long native = h->thread_native;
    *thread = Py_NewRef(h->thread_obj);
    if (info == Py_None) {
        *task_id = PyLong_FromLong(0);
        return *task_id != NULL ? 0 : -1;
    }
    *flags |= FLAG_TASK_ROOT;
    if ((PyObject *)Py_TYPE(info) == h->info_type) {
        ((TaskInfo *)info)->thread = (int64_t)native;
        *task_id = PyLong_FromLong(((TaskInfo *)info)->id);
        return *task_id != NULL ? 0 : -1;
    }
    *task_id = PyObject_GetAttr(info, NAME(h, id));
    return *task_id == NULL || PyObject_SetAttr(info, NAME(h, thread), *thread) < 0 ? -1 : 0;
}

/* Tracker._open (where=None) for what the fast path does not take: a root, a task's first
 * span, a child of a long-lived span, or past the open-span limit. `back` is frame.f_back,
 * or NULL when no span can be on the stack (Hooks.running). Returns a new reference to
 * the span, to None if none was opened, or NULL. */
AI_INTERNAL PyObject *
open_span(Hooks *h, PyObject *frame, PyObject *back, int64_t code_id, int code_flags, int64_t t)
{
    if (PyDict_Size(h->open) >= h->max_open) {
        return drop(h, h->s_open_limit) < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *parent, *info;
    int same_task;
    if (find_parent(h, frame, back, &parent, &info, &same_task) < 0) {
        return NULL;
    }
    int64_t flags = 0;
    Lineage from = {NULL, NULL, NULL, NULL, NULL};
    PyObject *task_id = NULL, *thread = NULL, *span = NULL, *t_obj = NULL;
    PyObject *span_id = PyLong_FromLong(h->next_span_id++);
    if (span_id == NULL || lineage(h, parent, span_id, code_id, code_flags, t, &from) < 0) {
        goto done;
    }
    if (same_task) {
        task_id = item_ref(parent, TASK);
        thread = item_ref(parent, THREAD);
        if (task_id == NULL || thread == NULL) {
            goto done;
        }
    }
    else if (task_of(h, info, &task_id, &thread, &flags) < 0) {
        goto done;
    }
    int sampled = PyObject_IsTrue(from.sampled);
    t_obj = PyLong_FromLong(t);
    if (sampled < 0 || t_obj == NULL) {
        goto done;
    }
    span = blank_span(h);
    if (span == NULL) {
        goto done;
    }
    if (put_ref(span, ID, span_id) < 0 || put_ref(span, PARENT_ID, from.parent_id) < 0
        || put_ref(span, TRACE, from.trace) < 0 || put_ref(span, TASK, task_id) < 0
        || put_int(span, CODE, code_id) < 0 || put_ref(span, THREAD, thread) < 0
        || put_ref(span, START, t_obj) < 0 || put_ref(span, RESUMED, t_obj) < 0
        || (sampled && put(span, EVENTS, first_events(t_obj)) < 0)
        || put_ref(span, LINK, from.link) < 0 || put_ref(span, REMOTE, from.remote) < 0
        || put_int(span, FLAGS, flags) < 0 || put_ref(span, SAMPLED, from.sampled) < 0
        || (same_task ? put_ref(span, PARENT, parent) : put_ref(span, TASK_INFO, info)) < 0) {
        goto fail;
    }
    if (sampled && (code_flags & AI_CODE_CAPTURE) && capture(h, span, code_id, frame) < 0) {
        goto fail;
    }
    if (same_task && put_ref(parent, CHILD, span) < 0) {
        goto fail;
    }
    if (PyDict_SetItem(h->open, frame, span) < 0) {
        goto fail;
    }
    h->running++;
    if (!same_task && info != Py_None) { /* found again in `open` by task_counts */
        h->meters.tasks_created++;
    }
    goto done;
fail:
    Py_CLEAR(span);
done:
    Py_DECREF(parent);
    Py_DECREF(info);
    lineage_clear(&from);
    Py_XDECREF(span_id);
    Py_XDECREF(task_id);
    Py_XDECREF(thread);
    Py_XDECREF(t_obj);
    return span;
}

/* Meters.span_finished, into the C deltas (`busy` as finished). */
static int
meter_span(Hooks *h, PyObject *span, int state, int64_t end, int outermost, int64_t busy)
{
    int64_t flags, start, code_id;
    if (get_int(span, FLAGS, &flags) < 0) {
        return -1;
    }
    if (flags & FLAG_START_UNKNOWN) { /* adopted: its start, so its duration, is unknown */
        return 0;
    }
    if (get_int(span, START, &start) < 0 || get_int(span, CODE, &code_id) < 0) {
        return -1;
    }
    int64_t duration = end - start;
    Histogram *histogram = meter_histogram(&h->meters, code_id * 8 + state);
    if (histogram == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    histogram->count++;
    histogram->sum += duration;
    histogram->buckets[meter_bucket(&h->meters, duration)]++;
    if (outermost) { /* inner spans' polls and busy time are already in their outermost's */
        int64_t polls;
        if (get_int(span, POLLS, &polls) < 0) {
            return -1;
        }
        h->meters.polls += polls;
        h->meters.busy_ns += busy;
    }
    return 0;
}

/* The sampled tail of Tracker._finish: outcome event, error, task name, buffer. */
static int
finish_sampled(Hooks *h, PyObject *span, int state, int64_t t, PyObject *exc)
{
    PyObject *events = PyList_GetItem(span, EVENTS);
    if (events == NULL || append_event(events, STATE_EVENTS[state], t, Py_None) < 0) {
        return -1; /* the outcome, even past the cap */
    }
    if (exc != NULL && put(span, ERROR, call_method(h, NAME(h, _describe_error), exc, NULL)) < 0) {
        return -1;
    }
    PyObject *info = PyList_GetItem(span, TASK_INFO);
    if (info == NULL) {
        return -1;
    }
    if (info != Py_None) {
        Py_INCREF(info);
        int failed = put(span, TASK_NAME, info_name(h, info)) < 0
                     || put(span, PARENT_TASK, info_creator_task(h, info)) < 0;
        Py_DECREF(info);
        if (failed) {
            return -1;
        }
    }
    Py_ssize_t buffered = PyObject_Size(h->finished);
    if (buffered < 0) {
        return -1;
    }
    if (buffered >= h->max_buffer) {
        return drop(h, h->s_buffer_full);
    }
    PyObject *result = call_one(h->finished_append, span);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* Tracker._finish. `span` is borrowed (the caller holds it); `exc` may be NULL.
 *
 * An unsampled span is dropped once counted, and nothing reads the end, state or busy
 * time of a finished span but the meters (in_flight only sees open spans; a task's creator
 * span is read for its trace, task and start): those fields are written for sampled
 * spans only, which saves a third of the work on the common path. */
AI_INTERNAL int
finish(Hooks *h, PyObject *span, int state, int64_t t, PyObject *exc)
{
    int64_t resumed, busy;
    PyObject *parent = PyList_GetItem(span, PARENT);
    int sampled = is_true(span, SAMPLED);
    if (parent == NULL || sampled < 0 || get_int(span, RESUMED, &resumed) < 0) {
        return -1;
    }
    h->running -= resumed != 0; /* out of `open` (the caller took it) */
    if (get_int(span, BUSY, &busy) < 0) {
        return -1;
    }
    if (resumed) {
        busy += t - resumed;
        if (parent == Py_None) { /* a task's last step, ended by return or raise */
            meter_step(&h->meters, t - resumed);
        }
    }
    if (sampled
        && (put_int(span, END, t) < 0 || put_int(span, STATE, state) < 0
            || (resumed && (put_int(span, BUSY, busy) < 0 || put_int(span, RESUMED, 0) < 0)))) {
        return -1;
    }
    if (parent != Py_None) {
        PyObject *child = PyList_GetItem(parent, CHILD);
        if (child == NULL || (child == span && put_ref(parent, CHILD, Py_None) < 0)) {
            return -1;
        }
    }
    if (meter_span(h, span, state, t, parent == Py_None, busy) < 0) {
        return -1;
    }
    PyObject *info = PyList_GetItem(span, TASK_INFO);
    if (info == NULL) {
        return -1;
    }
    if (info != Py_None) { /* a task's first span: the task is done */
        h->meters.tasks_finished[state]++;
    }
    return sampled ? finish_sampled(h, span, state, t, exc) : 0;
}

/* Tracker._record_poll: the innermost span was resumed; `detail` is borrowed. */
AI_INTERNAL int
record_poll(Hooks *h, PyObject *span, int64_t t, PyObject *detail)
{
    PyObject *events = PyList_GetItem(span, EVENTS);
    int64_t blocked_at;
    if (events == NULL || get_int(span, BLOCKED_AT, &blocked_at) < 0) {
        return -1;
    }
    Py_ssize_t length = PyList_Size(events);
    if (length < 0) {
        return -1;
    }
    int64_t room = h->max_event_items - length;
    int64_t woke = wake_get(&h->wakes, PyThread_get_thread_ident());
    if (woke > blocked_at) {
        if (room >= 6) {
            return append_event(events, EVENT_WAKE, woke, Py_None) < 0
                           || append_event(events, EVENT_POLL, t, detail) < 0
                       ? -1
                       : 0;
        }
        if (room >= 3) {
            return append_event(events, EVENT_WAKE, woke, Py_None) < 0
                           || add_int(span, EVENTS_DROPPED, 1) < 0
                       ? -1
                       : 0;
        }
        return add_int(span, EVENTS_DROPPED, 2);
    }
    if (room >= 3) {
        return append_event(events, EVENT_POLL, t, detail);
    }
    return add_int(span, EVENTS_DROPPED, 1);
}

/* _describe_awaited: what a suspended coroutine waits for, as short as possible. */
AI_INTERNAL PyObject *
describe_awaited(Hooks *h, PyObject *value)
{
    if (value == Py_None) {
        return Py_NewRef(h->s_yield); /* a bare yield: asyncio.sleep(0) or a custom awaitable */
    }
    int is_task = PyObject_IsInstance(value, h->task_type);
    if (is_task < 0) {
        return NULL;
    }
    if (!is_task) {
        return PyType_GetQualName(Py_TYPE(value));
    }
    PyObject *name = call_method_of(value, NAME(h, get_name), NULL, NULL);
    if (name == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_Concat(h->s_task_prefix, name);
    Py_DECREF(name);
    return text;
}
