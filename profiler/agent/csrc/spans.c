/* Span life: open, poll, suspend, finish (tracker.py: on_start's inlined child case,
 * _open, _sample, _finish, _record_poll, _describe_awaited; meters.py: span_finished).
 *
 * Spans are Span objects (accel.h), written field by field.
 */
#include "accel.h"

static const int STATE_EVENTS[] = {0, 4, 5, 6}; /* completed, failed, cancelled events */

/* Tracker._drop, without a Python call: an overloaded app drops spans by the million. */
AI_INTERNAL int
drop(Hooks *h, PyObject *reason)
{
    PyObject *count = PyDict_GetItemWithError(h->dropped, reason);
    long long before = count != NULL ? PyLong_AsLongLong(count) : 0;
    if ((count == NULL || before == -1) && PyErr_Occurred()) {
        return -1;
    }
    PyObject *after = PyLong_FromLongLong(before + 1);
    int failed = after == NULL || PyDict_SetItem(h->dropped, reason, after) < 0;
    Py_XDECREF(after);
    return failed ? -1 : 0;
}

/* (remote[0], 0): the app's trace id on a descendant of the app's own span; or None. */
static PyObject *
remote_below(PyObject *remote)
{
    if (remote == Py_None) {
        return NONE;
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
capture(Hooks *h, Span *span, int64_t code_id, PyObject *frame)
{
    PyObject *code_obj = PyLong_FromLong(code_id);
    if (code_obj == NULL) {
        return -1;
    }
    PyObject *attrs = call_method(h, NAME(h, _capture), code_obj, frame);
    Py_DECREF(code_obj);
    if (attrs == NULL) {
        return -1;
    }
    span_set(span, ATTRS, attrs);
    return 0;
}

/* new_span's events for a sampled span: its first `poll`. */
static int
first_poll(Span *span, int64_t t)
{
    span->has_events = 1;
    return span_event(span, EVENT_POLL, t, Py_None);
}

/* The common case of Tracker.on_start: awaited directly by a traced coroutine of the same
 * task. `parent` is borrowed. */
AI_INTERNAL int
open_child(Hooks *h, PyObject *frame, Span *parent, int64_t code_id, int code_flags,
           int64_t t)
{
    int sampled = (int)parent->f[SAMPLED].i;
    PyObject *remote = remote_below(parent->f[REMOTE].o);
    PyObject *made = remote != NULL ? span_new(h, sampled) : NULL;
    if (made == NULL) {
        Py_XDECREF(remote);
        return -1;
    }
    Span *span = SPAN(made);
    span->f[ID].i = h->next_span_id++;
    span->f[PARENT_ID].i = parent->f[ID].i;
    span->f[TRACE].i = parent->f[TRACE].i;
    span->f[TASK].i = parent->f[TASK].i;
    span->f[CODE].i = code_id;
    span->f[THREAD].i = parent->f[THREAD].i;
    span->f[START].i = span->f[RESUMED].i = t;
    span->f[SAMPLED].i = sampled;
    span_set(span, REMOTE, remote);
    span_set(span, PARENT, Py_NewRef((PyObject *)parent));
    int failed = (sampled && first_poll(span, t) < 0) || map_put(h->open, frame, made) < 0;
    if (!failed) {
        span_set(parent, CHILD, Py_NewRef(made));
        h->running++; /* in `open`, running */
    }
    failed = failed
             || (sampled && (code_flags & AI_CODE_CAPTURE) && capture(h, span, code_id, frame) < 0);
    Py_DECREF(made);
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

/* app_trace.app_otel_parent(), asked only once the app has imported OpenTelemetry. */
static PyObject *
app_otel_parent(Hooks *h)
{
    PyObject *found = PyDict_GetItemWithError(PyImport_GetModuleDict(), h->s_otel_module);
    if (found == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    return PyObject_CallNoArgs(h->otel_parent);
}

/* Where a span's trace comes from; `remote` is a new reference. */
typedef struct {
    int64_t trace, parent_id, link[2];
    int sampled, has_link;
    PyObject *remote;
} Lineage;

/* The app's own OpenTelemetry span, if any: `out->remote` and, parent-based, `sampled`. */
static int
app_lineage(Hooks *h, Lineage *out)
{
    PyObject *app = app_otel_parent(h);
    if (app == NULL) {
        return -1;
    }
    if (app == Py_None) {
        out->remote = app;
        return 0;
    }
    PyObject *app_trace = PySequence_GetItem(app, 0);
    PyObject *app_span = PySequence_GetItem(app, 1);
    PyObject *app_sampled = h->parent_based ? PySequence_GetItem(app, 2) : NULL;
    out->remote = app_trace && app_span ? PyTuple_Pack(2, app_trace, app_span) : NULL;
    if (app_sampled != NULL) {
        out->sampled = PyObject_IsTrue(app_sampled);
    }
    Py_XDECREF(app_trace);
    Py_XDECREF(app_span);
    Py_XDECREF(app_sampled);
    Py_DECREF(app);
    return out->remote == NULL || (h->parent_based && out->sampled < 0) ? -1 : 0;
}

/* The trace part of Tracker._open; `parent` may be NULL. */
static int
lineage(Hooks *h, Span *parent, int64_t span_id, int64_t code_id, int code_flags, int64_t t,
        Lineage *out)
{
    out->sampled = -1;
    if (parent != NULL && t - parent->f[START].i <= h->split_ns) {
        out->trace = parent->f[TRACE].i;
        out->parent_id = parent->f[ID].i;
        out->sampled = (int)parent->f[SAMPLED].i;
        out->remote = remote_below(parent->f[REMOTE].o);
        return out->remote != NULL ? 0 : -1;
    }
    /* A root, or a child of a long-lived span (a server loop, a worker): its own trace,
     * linked to where it came from, so no trace grows without end. */
    out->trace = span_id;
    out->parent_id = 0;
    if (parent != NULL) {
        out->has_link = 1;
        out->link[0] = parent->f[TRACE].i;
        out->link[1] = parent->f[ID].i;
        out->remote = NONE;
    }
    else if (app_lineage(h, out) < 0) {
        return -1;
    }
    if (out->sampled < 0) {
        out->sampled = sample(h, code_id, code_flags);
    }
    return out->sampled < 0 ? -1 : 0;
}

/* The task part of Tracker._open for a span that is not its parent's child in the same
 * task: its task id, thread, and (for a task's first span) the task root flag. */
static int
task_of(Hooks *h, PyObject *info, int64_t *task_id, int64_t *thread, int64_t *flags)
{
    unsigned long ident = PyThread_get_thread_ident();
    if (!h->have_thread || h->thread_ident != ident) { /* gettid() is a system call */
        h->thread_native = PyThread_get_thread_native_id();
        h->thread_ident = ident;
        h->have_thread = 1;
    }
    *thread = (int64_t)h->thread_native;
    *task_id = 0;
    if (info == Py_None) {
        return 0;
    }
    *flags |= FLAG_TASK_ROOT;
    if (info_id(h, info, task_id) < 0) {
        return -1;
    }
    if (is_task_info(h, info)) {
        ((TaskInfo *)info)->thread = *thread;
        return 0;
    }
    PyObject *thread_obj = PyLong_FromLongLong(*thread);
    int failed = thread_obj == NULL || PyObject_SetAttr(info, NAME(h, thread), thread_obj) < 0;
    Py_XDECREF(thread_obj);
    return failed ? -1 : 0;
}

/* Tracker._open (where=None) for what the fast path does not take: a root, a task's first
 * span, a child of a long-lived span, or past the open-span limit. `back` is frame.f_back,
 * or NULL when no span can be on the stack (Hooks.running). Returns a new reference to
 * the span, to None if none was opened, or NULL. */
AI_INTERNAL PyObject *
open_span(Hooks *h, PyObject *frame, PyObject *back, int64_t code_id, int code_flags, int64_t t)
{
    if ((int64_t)h->open->used >= h->max_open) {
        return drop(h, h->s_open_limit) < 0 ? NULL : Py_NewRef(Py_None);
    }
    Parentage at;
    if (find_parent(h, frame, back, &at) < 0) {
        return NULL;
    }
    /* Not one of ours (a creator kept by an agent we took over from): no parent. */
    Span *parent = at.parent != Py_None && is_span(h, at.parent) ? SPAN(at.parent) : NULL;
    int same_task = at.same_task && parent != NULL;
    int64_t flags = 0, span_id = h->next_span_id++, task_id, thread, unseen_id = 0;
    Lineage from = {.sampled = -1};
    PyObject *made = NULL;
    if (lineage(h, parent, span_id, code_id, code_flags, t, &from) < 0) {
        goto done;
    }
    if (at.unseen != Py_None && from.sampled) { /* recorded: the task gets an id */
        PyObject *info = unseen_task_info(h, at.unseen, &unseen_id);
        if (info == NULL) {
            goto done;
        }
        Py_DECREF(at.info);
        at.info = info; /* its TaskInfo, or a weak reference to it */
    }
    if (same_task) {
        task_id = parent->f[TASK].i;
        thread = parent->f[THREAD].i;
        if (task_id == 0 && from.sampled && (task_id = running_task_id(h)) < 0) {
            goto done; /* a sampled split from an unsampled span of an unseen task */
        }
    }
    else if (unseen_id != 0) {
        if (task_of(h, Py_None, &task_id, &thread, &flags) < 0) {
            goto done;
        }
        task_id = unseen_id;
    }
    else if (task_of(h, at.info, &task_id, &thread, &flags) < 0) {
        goto done;
    }
    if (at.unseen != Py_None) {
        flags |= FLAG_TASK_ROOT; /* counted as a task's first span, TaskInfo or not */
    }
    made = span_new(h, from.sampled);
    if (made == NULL) {
        goto done;
    }
    Span *span = SPAN(made);
    span->f[ID].i = span_id;
    span->f[PARENT_ID].i = from.parent_id;
    span->f[TRACE].i = from.trace;
    span->f[TASK].i = task_id;
    span->f[CODE].i = code_id;
    span->f[THREAD].i = thread;
    span->f[START].i = span->f[RESUMED].i = t;
    span->f[FLAGS].i = flags;
    span->f[SAMPLED].i = from.sampled;
    span->f[LINK].i = from.has_link;
    span->link[0] = from.link[0];
    span->link[1] = from.link[1];
    span_set(span, REMOTE, from.remote);
    from.remote = NULL;
    span_set(span, same_task ? PARENT : TASK_INFO, Py_NewRef(same_task ? at.parent : at.info));
    if ((from.sampled && first_poll(span, t) < 0)
        || (from.sampled && (code_flags & AI_CODE_CAPTURE) && capture(h, span, code_id, frame) < 0)
        || map_put(h->open, frame, made) < 0) {
        Py_CLEAR(made);
        goto done;
    }
    if (same_task) {
        span_set(parent, CHILD, Py_NewRef(made));
    }
    h->running++;
    if (flags & FLAG_TASK_ROOT) { /* found again in `open` by task_counts */
        h->meters.tasks_created++;
    }
done:
    Py_DECREF(at.parent);
    Py_DECREF(at.info);
    Py_DECREF(at.unseen);
    drop_ref(from.remote);
    return made;
}

/* Meters.span_finished, into the C deltas (`busy` as finished). */
static int
meter_span(Hooks *h, Span *span, int state, int64_t end, int outermost, int64_t busy)
{
    if (span->f[FLAGS].i & FLAG_START_UNKNOWN) { /* adopted: its duration is unknown */
        return 0;
    }
    int64_t duration = end - span->f[START].i;
    Histogram *histogram = meter_histogram(&h->meters, span->f[CODE].i * 8 + state);
    if (histogram == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    histogram->count++;
    histogram->sum += duration;
    histogram->buckets[meter_bucket(&h->meters, duration)]++;
    if (outermost) { /* inner spans' polls and busy time are already in their outermost's */
        h->meters.polls += span->f[POLLS].i;
        h->meters.busy_ns += busy;
    }
    return 0;
}

/* Whether the buffer is full, counting a drop if so: 1, 0, or -1 with an exception. */
static int
buffer_full(Hooks *h)
{
    Py_ssize_t buffered = PyObject_Size(h->finished);
    if (buffered < 0) {
        return -1;
    }
    if (buffered < h->max_buffer) {
        return 0;
    }
    h->buffer_full_drops++;
    return 1;
}

/* The sampled tail of Tracker._finish: outcome event, error, task name, buffer. A full
 * buffer is seen first, before that work (an overloaded app drops most of its spans), and
 * again at the end, as Python (the error, the task name) may have run meanwhile. */
static int
finish_sampled(Hooks *h, Span *span, int state, int64_t t, PyObject *exc)
{
    int full = buffer_full(h);
    if (full != 0) {
        return full < 0 ? -1 : 0;
    }
    if (span_event(span, STATE_EVENTS[state], t, Py_None) < 0) {
        return -1; /* the outcome, even past the cap */
    }
    if (exc != NULL) {
        PyObject *error = call_method(h, NAME(h, _describe_error), exc, NULL);
        if (error == NULL) {
            return -1;
        }
        span_set(span, ERROR, error);
    }
    PyObject *info = span->f[TASK_INFO].o;
    if (info != Py_None) {
        Py_INCREF(info);
        int named = PyWeakref_CheckRef(info); /* tasks.c: unseen_task_info */
        PyObject *name = named ? named_task_name(h, info, span->f[TASK].i) : info_name(h, info);
        int failed = name == NULL
                     || (!named && info_creator_task(h, info, &span->f[PARENT_TASK].i) < 0);
        Py_DECREF(info);
        if (failed) {
            Py_XDECREF(name);
            return -1;
        }
        span_set(span, TASK_NAME, name);
    }
    if ((exc != NULL || info != Py_None) && (full = buffer_full(h)) != 0) {
        return full < 0 ? -1 : 0;
    }
    PyObject *result = call_one(h->finished_append, (PyObject *)span);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* Tracker._finish. `span` is borrowed (the caller holds it); `exc` may be NULL. An
 * unsampled span is dropped once counted. */
AI_INTERNAL int
finish(Hooks *h, Span *span, int state, int64_t t, PyObject *exc)
{
    int64_t resumed = span->f[RESUMED].i, busy = span->f[BUSY].i;
    PyObject *parent = span->f[PARENT].o;
    h->running -= resumed != 0; /* out of `open` (the caller took it) */
    if (resumed) {
        busy += t - resumed;
        if (parent == Py_None) { /* a task's last step, ended by return or raise */
            meter_step(&h->meters, t - resumed);
        }
    }
    span->f[END].i = t;
    span->f[STATE].i = state;
    span->f[BUSY].i = busy;
    span->f[RESUMED].i = 0;
    if (parent != Py_None && is_span(h, parent)
        && SPAN(parent)->f[CHILD].o == (PyObject *)span) {
        span_set(SPAN(parent), CHILD, NONE);
    }
    if (meter_span(h, span, state, t, parent == Py_None, busy) < 0) {
        return -1;
    }
    if (span->f[FLAGS].i & FLAG_TASK_ROOT) { /* a task's first span: the task is done */
        h->meters.tasks_finished[state]++;
    }
    return span->f[SAMPLED].i ? finish_sampled(h, span, state, t, exc) : 0;
}

/* Tracker._record_poll: the innermost span was resumed; `detail` is borrowed. */
AI_INTERNAL int
record_poll(Hooks *h, Span *span, int64_t t, PyObject *detail)
{
    int64_t room = h->max_event_items - EVENT_ITEMS(span);
    int64_t woke = wake_get(&h->wakes, PyThread_get_thread_ident());
    if (woke > span->f[BLOCKED_AT].i) {
        if (room >= 6) {
            return span_event(span, EVENT_WAKE, woke, Py_None) < 0
                           || span_event(span, EVENT_POLL, t, detail) < 0
                       ? -1
                       : 0;
        }
        if (room >= 3) {
            span->f[EVENTS_DROPPED].i++;
            return span_event(span, EVENT_WAKE, woke, Py_None);
        }
        span->f[EVENTS_DROPPED].i += 2;
        return 0;
    }
    if (room >= 3) {
        return span_event(span, EVENT_POLL, t, detail);
    }
    span->f[EVENTS_DROPPED].i++;
    return 0;
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
    /* A default name, as get_name() would give it, without formatting it into the task:
     * that costs ~2,600 instructions, and the task would lose its id by name (tasks.c). */
    int64_t number = default_name_number(h, value);
    if (number != 0) {
        return number < 0 ? NULL
                          : PyUnicode_FromFormat("%UTask-%lld", h->s_task_prefix,
                                                 (long long)number);
    }
    PyObject *name = call_method_of(value, NAME(h, get_name), NULL, NULL);
    if (name == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_Concat(h->s_task_prefix, name);
    Py_DECREF(name);
    return text;
}
