/* The sys.monitoring callbacks themselves, the Hooks type that holds their state, and the
 * `_accel` module (tracker.py: on_start, on_resume, on_throw, on_yield, on_return,
 * on_unwind, fault).
 *
 * PY_UNWIND and PY_THROW cannot be enabled per code object, so they arrive for every frame:
 * their callbacks return at once for code we do not trace and never return DISABLE, which
 * for these events would switch them off process-wide.
 */
#include <stddef.h>

#include "accel.h"

#define AI_NAME_TEXT(n) #n,
static const char *const NAME_TEXTS[] = {AI_NAMES(AI_NAME_TEXT)};

/* Tracker.fault: never raise into the application. Exceptions that are not `Exception`
 * (KeyboardInterrupt, SystemExit) go on, as they do from the Python callbacks. */
AI_INTERNAL PyObject *
fault(Hooks *h)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (exc == NULL) {
        Py_RETURN_NONE;
    }
    if (!PyErr_GivenExceptionMatches(exc, PyExc_Exception)) {
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    PyObject *result = call_method(h, NAME(h, fault), exc, NULL);
    Py_DECREF(exc);
    if (result == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(result);
    Py_RETURN_NONE;
}

/* `found` (from `open`), if it is a Span; else NULL, with a TypeError for anything but
 * NULL. Python puts only Spans there (AcceleratedTracker._new_span): this is a guard. */
static PyObject *
checked(Hooks *h, PyObject *found)
{
    if (found == NULL || is_span(h, found)) {
        return found;
    }
    PyErr_SetString(PyExc_TypeError, "a span in `open` is not an _accel.Span");
    return NULL;
}

/* A new reference to the span `open` maps `frame` to, removed from `open`; NULL with no
 * exception if there is none. */
static PyObject *
pop_open(Hooks *h, PyObject *frame)
{
    PyObject *span = map_pop(h->open, frame);
    if (span != NULL && checked(h, span) == NULL) {
        Py_DECREF(span);
        return NULL;
    }
    return span;
}

/* A new reference to the span of the running frame, taken out of `open` if `take`; NULL
 * with no exception if there is none. With `code`, only for a code object we trace (for
 * the events that come for every frame). */
static PyObject *
running_span(Hooks *h, PyObject *code, int take)
{
    if (code != NULL) {
        CodeSlot *slot = code_find(&h->codes, code);
        if (slot == NULL || slot->code_id == 0) {
            return NULL;
        }
    }
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    if (frame == NULL) {
        return NULL;
    }
    return take ? pop_open(h, frame)
                : Py_XNewRef(checked(h, map_get(h->open, frame)));
}

/* What a callback returns: None, after reporting the pending error if there is one. */
static PyObject *
done(Hooks *h)
{
    return PyErr_Occurred() ? fault(h) : NONE;
}

/* The time of a resume or suspension, `kind`, of `span`. Along an await chain, a
 * coroutine resumes right after the one awaiting it (`follows`): that one's SEND goes
 * straight on into it; and it suspends right after the one it awaits: nothing runs in
 * between. Such an event takes the time of the one before instead of reading the clock
 * again (on these VMs a read costs ~20 ns, as much as the rest of the callback). Every
 * other callback resets the chain (forget_last). */
static inline int64_t
chain_time(Hooks *h, int kind, Span *span, PyObject *follows)
{
    int64_t t = h->last_kind == kind && (PyObject *)h->last_span == follows ? h->last_t
                                                                            : now_ns();
    h->last_kind = kind;
    h->last_span = span;
    h->last_t = t;
    return t;
}

static inline void
forget_last(Hooks *h)
{
    h->last_kind = LAST_NONE;
}

/* -- the sys.monitoring callbacks ------------------------------------------------------ */

/* PY_START(code, offset): open a span, or DISABLE this code for good if it is not traced. */
static PyObject *
Hooks_on_start(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    forget_last(h);
    if (nargs < 1) {
        Py_RETURN_NONE;
    }
    PyObject *code = args[0];
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    if (frame == NULL) {
        Py_RETURN_NONE;
    }
    CodeSlot *slot = code_find(&h->codes, code);
    if (slot == NULL || slot->code_id == 0) {
        PyObject *known = call_method(h, NAME(h, _consider_at_start), code, frame);
        if (known == NULL) {
            return fault(h);
        }
        Py_DECREF(known);
        if (known == Py_None) {
            return Py_NewRef(h->disable);
        }
        slot = code_find(&h->codes, code); /* consider registered it with us */
        if (slot == NULL || slot->code_id == 0) {
            Py_RETURN_NONE;
        }
    }
    int64_t code_id = slot->code_id;
    int code_flags = slot->flags;
    int64_t t = now_ns();
    int walk = h->running != 0 ? 1 : pending_task_runs(h);
    if (walk < 0) {
        return fault(h);
    }
    if (!walk) {
        /* Nothing of ours on any stack (Hooks.running, pending_task_runs): a root, or a
         * task's first span, found without walking the frames below (a server's request
         * task, each time). */
        PyObject *span = open_span(h, frame, NULL, code_id, code_flags, t);
        Py_XDECREF(span);
        return span == NULL ? fault(h) : NONE;
    }
    PyObject *back = PyObject_GetAttr(frame, NAME(h, f_back));
    if (back == NULL) {
        return fault(h);
    }
    PyObject *parent = back != Py_None ? checked(h, map_get(h->open, back)) : NULL;
    int slow = parent == NULL;
    if (slow && PyErr_Occurred()) { /* not a Span */
        goto fail;
    }
    if (!slow) {
        slow = t - SPAN(parent)->f[START].i > h->split_ns
               || (int64_t)h->open->used >= h->max_open;
        if (!slow && PyDict_Size(h->task_frames) > 0
            && (slow = PyDict_Contains(h->task_frames, frame)) < 0) {
            goto fail;
        }
    }
    if (slow) {
        PyObject *span = open_span(h, frame, back, code_id, code_flags, t);
        if (span == NULL) {
            goto fail;
        }
        Py_DECREF(span);
    }
    else {
        /* The common case, inlined in Python too: awaited directly by a traced coroutine
         * of this task (held by `open`, which open_child only adds to). */
        if (open_child(h, frame, SPAN(parent), code_id, code_flags, t) < 0) {
            goto fail;
        }
    }
    Py_DECREF(back);
    Py_RETURN_NONE;
fail:
    Py_DECREF(back);
    return fault(h);
}

/* A resumed span, at `t`: one more poll; the innermost records it (with the loop's wake). */
static int
resumed(Hooks *h, Span *span, int64_t t, PyObject *detail)
{
    h->running += span->f[RESUMED].i == 0;
    span->f[RESUMED].i = t;
    span->f[POLLS].i++;
    if (span->f[SAMPLED].i && span->f[CHILD].o == Py_None) {
        return record_poll(h, span, t, detail != NULL ? detail : Py_None);
    }
    return 0;
}

/* PY_RESUME(code, offset) */
static PyObject *
Hooks_on_resume(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    PyObject *span = frame != NULL && nargs >= 1
                         ? checked(h, map_get(h->open, frame))
                         : NULL;
    if (span == NULL) {
        forget_last(h);
        if (frame == NULL || nargs < 1) {
            Py_RETURN_NONE;
        }
        if (PyErr_Occurred()) {
            return fault(h);
        }
        CodeSlot *slot = code_find(&h->codes, args[0]);
        if (slot != NULL && slot->code_id != 0) { /* started before we watched it */
            PyObject *result = call_method(h, NAME(h, _adopt), args[0], frame);
            if (result == NULL) {
                return fault(h);
            }
            Py_DECREF(result);
        }
        Py_RETURN_NONE;
    }
    Py_INCREF(span);
    int64_t t = chain_time(h, LAST_RESUME, SPAN(span), SPAN(span)->f[PARENT].o);
    int failed = resumed(h, SPAN(span), t, NULL) < 0;
    Py_DECREF(span);
    return failed ? fault(h) : NONE;
}

/* PY_THROW(code, offset, exception): global, so it comes for every frame; never DISABLE. */
static PyObject *
Hooks_on_throw(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    forget_last(h);
    PyObject *span = nargs < 3 ? NULL : running_span(h, args[0], 0);
    if (span == NULL) {
        return done(h);
    }
    PyObject *name = PyType_GetName(Py_TYPE(args[2]));
    PyObject *detail = name != NULL ? PyUnicode_Concat(h->s_throw_prefix, name) : NULL;
    Py_XDECREF(name);
    if (detail != NULL) {
        resumed(h, SPAN(span), now_ns(), detail);
    }
    Py_XDECREF(detail);
    Py_DECREF(span);
    return done(h);
}

/* PY_YIELD(code, offset, value): suspended; the innermost span records `blocked`. */
static PyObject *
Hooks_on_yield(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *span = nargs < 3 ? NULL : running_span(h, NULL, 0);
    if (span == NULL) {
        forget_last(h);
        return done(h);
    }
    Span *suspended = SPAN(span);
    int64_t t = chain_time(h, LAST_YIELD, suspended, suspended->f[CHILD].o);
    int64_t resumed_at = suspended->f[RESUMED].i;
    if (resumed_at) {
        int64_t step = t - resumed_at;
        suspended->f[BUSY].i += step;
        suspended->f[RESUMED].i = 0;
        h->running--;
        if (suspended->f[PARENT].o == Py_None) {
            meter_step(&h->meters, step); /* the loop was blocked this long */
        }
    }
    int failed = 0;
    if (suspended->f[SAMPLED].i && suspended->f[CHILD].o == Py_None) {
        suspended->f[BLOCKED_AT].i = t;
        if (EVENT_ITEMS(suspended) < h->max_event_items) {
            PyObject *detail = describe_awaited(h, args[2]);
            failed = detail == NULL || span_event(suspended, EVENT_BLOCKED, t, detail) < 0;
            Py_XDECREF(detail);
        }
        else {
            suspended->f[EVENTS_DROPPED].i++;
        }
    }
    Py_DECREF(span);
    return failed ? fault(h) : NONE;
}

/* PY_RETURN(code, offset, value): completed; or a selector's select() returned (a wake). */
static PyObject *
Hooks_on_return(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    forget_last(h);
    if (nargs < 1) {
        Py_RETURN_NONE;
    }
    CodeSlot *slot = code_find(&h->codes, args[0]);
    if (slot != NULL && (slot->flags & AI_CODE_WAKE)) { /* no frame object made per select() */
        wake_set(&h->wakes, PyThread_get_thread_ident(), now_ns());
        Py_RETURN_NONE;
    }
    PyObject *span = running_span(h, NULL, 1);
    if (span == NULL) {
        return done(h);
    }
    int failed = finish(h, SPAN(span), STATE_COMPLETED, now_ns(), NULL) < 0;
    Py_DECREF(span);
    return failed ? fault(h) : NONE;
}

/* PY_UNWIND(code, offset, exception): failed, or cancelled. Global: never DISABLE. */
static PyObject *
Hooks_on_unwind(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    forget_last(h);
    PyObject *span = nargs < 3 ? NULL : running_span(h, args[0], 1);
    if (span == NULL) {
        return done(h);
    }
    int cancelled = PyObject_IsInstance(args[2], h->cancelled);
    if (cancelled >= 0) {
        finish(h, SPAN(span), cancelled ? STATE_CANCELLED : STATE_FAILED, now_ns(), args[2]);
    }
    Py_DECREF(span);
    return done(h);
}

/* -- what the Python side calls --------------------------------------------------------- */

PyDoc_STRVAR(add_code_doc,
             "add_code(code, code_id, flags)\n--\n\n"
             "Trace coroutines of `code` under `code_id` (0: only add `flags`). The caller "
             "keeps `code` alive for as long as this object lives.");

static PyObject *
Hooks_add_code(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "add_code(code, code_id, flags)");
        return NULL;
    }
    long long code_id = PyLong_AsLongLong(args[1]);
    long flags = PyLong_AsLong(args[2]);
    if ((code_id == -1 || flags == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (code_id > 0) {
        flags |= AI_CODE_TRACED;
    }
    if (code_put(&h->codes, args[0], code_id, (int)flags) < 0) {
        return PyErr_NoMemory();
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(next_span_id_doc, "next_span_id()\n--\n\nA fresh span id (shared with Python).");

static PyObject *
Hooks_next_span_id(Hooks *h, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(h->next_span_id++);
}

PyDoc_STRVAR(take_meters_doc,
             "take_meters()\n--\n\n"
             "What the callbacks counted since the last call, for Meters.merge: "
             "(histograms as [(key, count, sum, buckets)], polls, busy_ns, longest_step_ns, "
             "slow_steps, tasks_created, tasks_finished). The counts restart from zero.");

static PyObject *
int_tuple(const int64_t *values, int count)
{
    PyObject *tuple = PyTuple_New(count);
    for (int i = 0; tuple != NULL && i < count; i++) {
        PyObject *value = PyLong_FromLong(values[i]);
        if (value == NULL) {
            Py_CLEAR(tuple);
            break;
        }
        PyTuple_SetItem(tuple, i, value);
    }
    return tuple;
}

static PyObject *
Hooks_take_meters(Hooks *h, PyObject *Py_UNUSED(ignored))
{
    /* Copy and reset first, with no Python call in between: a callback on another thread
     * can run as soon as this one touches a Python object. */
    MeterTable *meters = &h->meters;
    size_t count = meters->used;
    int width = meters->nbounds + 1;
    Histogram *copy = count ? malloc(count * sizeof(Histogram)) : NULL;
    if (count && copy == NULL) {
        return PyErr_NoMemory();
    }
    if (count) {
        memcpy(copy, meters->items, count * sizeof(Histogram));
    }
    int64_t scalars[4] = {meters->polls, meters->busy_ns, meters->longest_step_ns,
                          meters->tasks_created};
    int64_t slow[AI_SLOW_STEPS], finished[AI_STATES];
    memcpy(slow, meters->slow_steps, sizeof(slow));
    memcpy(finished, meters->tasks_finished, sizeof(finished));
    meter_reset(meters);

    PyObject *histograms = PyList_New(0);
    for (size_t i = 0; histograms != NULL && i < count; i++) {
        PyObject *buckets = int_tuple(copy[i].buckets, width);
        PyObject *entry = buckets != NULL ? Py_BuildValue("(LLLN)", (long long)copy[i].key,
                                                          (long long)copy[i].count,
                                                          (long long)copy[i].sum, buckets)
                                          : NULL;
        if (entry == NULL || PyList_Append(histograms, entry) < 0) {
            Py_XDECREF(entry);
            Py_CLEAR(histograms);
            break;
        }
        Py_DECREF(entry);
    }
    free(copy);
    if (histograms == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NLLLNLN)", histograms, (long long)scalars[0], (long long)scalars[1],
                         (long long)scalars[2], int_tuple(slow, AI_SLOW_STEPS),
                         (long long)scalars[3], int_tuple(finished, AI_STATES));
}

PyDoc_STRVAR(reset_doc,
             "reset()\n--\n\nForget wake times, counted meters, running spans, the last loop "
             "and thread (Tracker.clear); traced code stays traced.");

static PyObject *
Hooks_reset(Hooks *h, PyObject *Py_UNUSED(ignored))
{
    meter_reset(&h->meters);
    h->wakes.used = 0;
    h->factory_checks = 0;
    h->sweep_infos_at = SWEEP_INFOS_AT;
    h->running = 0;
    forget_last(h);
    Py_CLEAR(h->last_loop);
    h->have_thread = 0; /* a forked child's thread has another id */
    Py_RETURN_NONE;
}

PyDoc_STRVAR(now_doc, "now()\n--\n\nThe callbacks' clock: time.perf_counter_ns() on Linux.");

static PyObject *
Hooks_now(Hooks *h, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(now_ns());
}

PyDoc_STRVAR(task_created_doc,
             "task_created(coro, creator_frame)\n--\n\nTracker.task_created: the new task's "
             "TaskInfo, its creator the innermost open span at or below `creator_frame`.");

static PyObject *
Hooks_task_created(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "task_created(coro, creator_frame)");
        return NULL;
    }
    return task_created(h, args[0], args[1]);
}

PyDoc_STRVAR(task_bound_doc,
             "task_bound(info, task, coro)\n--\n\nTracker.task_bound: remember `task` for "
             "`info` until the task is freed.");

static PyObject *
Hooks_task_bound(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "task_bound(info, task, coro)");
        return NULL;
    }
    return task_bound(h, args[0], args[1], args[2]) < 0 ? NULL : Py_NewRef(Py_None);
}

PyDoc_STRVAR(info_for_doc,
             "info_for(task)\n--\n\nTracker.info_for: the TaskInfo of a task, made now if "
             "the factory did not see it.");

static PyObject *
Hooks_info_for(Hooks *h, PyObject *task)
{
    return info_for(h, task);
}

PyDoc_STRVAR(marshal_spans_doc,
             "marshal_spans(spans)\n--\n\nmarshal.dumps([spans.to_wire(s) for s in spans]), "
             "in marshal's format but written here; None if a value is not one of a record's "
             "plain types.");

static PyObject *
Hooks_marshal_spans(Hooks *h, PyObject *spans)
{
    return marshal_spans(h, spans);
}

PyDoc_STRVAR(task_counts_doc,
             "task_counts()\n--\n\nTracker.task_counts: (live tasks, running tasks, the "
             "earliest time one of them resumed or 0), from the open spans.");

static PyObject *
Hooks_task_counts(Hooks *h, PyObject *Py_UNUSED(ignored))
{
    int64_t live, running, oldest;
    if (task_counts(h, &live, &running, &oldest) < 0) {
        return NULL;
    }
    return Py_BuildValue("(LLL)", (long long)live, (long long)running, (long long)oldest);
}

/* -- the type ------------------------------------------------------------------------------ */

static int
get_item(PyObject *config, const char *key, PyObject **out)
{
    PyObject *value = PyDict_GetItemString(config, key);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "accelerator config lacks %s", key);
        return -1;
    }
    *out = Py_NewRef(value);
    return 0;
}

static int
get_config_int(PyObject *config, const char *key, int64_t *out)
{
    PyObject *value;
    if (get_item(config, key, &value) < 0) {
        return -1;
    }
    long long number = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = number;
    return 0;
}

/* The span layout and wire values this file was compiled with must be Python's. */
static int
check_layout(PyObject *layout)
{
    static const struct {
        const char *name;
        int value;
    } expected[] = {
        {"ID", ID}, {"PARENT_ID", PARENT_ID}, {"TRACE", TRACE}, {"TASK", TASK},
        {"CODE", CODE}, {"THREAD", THREAD}, {"START", START}, {"END", END},
        {"STATE", STATE}, {"POLLS", POLLS}, {"BUSY", BUSY}, {"EVENTS", EVENTS},
        {"EVENTS_DROPPED", EVENTS_DROPPED}, {"ERROR", ERROR}, {"TASK_NAME", TASK_NAME},
        {"PARENT_TASK", PARENT_TASK}, {"LINK", LINK}, {"REMOTE", REMOTE}, {"FLAGS", FLAGS},
        {"ATTRS", ATTRS}, {"RESUMED", RESUMED}, {"PARENT", PARENT}, {"CHILD", CHILD},
        {"SAMPLED", SAMPLED}, {"TASK_INFO", TASK_INFO}, {"BLOCKED_AT", BLOCKED_AT},
        {"SPAN_LEN", SPAN_LEN}, {"EVENT_POLL", EVENT_POLL}, {"EVENT_WAKE", EVENT_WAKE},
        {"EVENT_BLOCKED", EVENT_BLOCKED}, {"EVENT_COMPLETED", 4}, {"EVENT_FAILED", 5},
        {"EVENT_CANCELLED", 6}, {"STATE_COMPLETED", STATE_COMPLETED},
        {"STATE_FAILED", STATE_FAILED}, {"STATE_CANCELLED", STATE_CANCELLED},
        {"STATE_RUNNING", STATE_RUNNING}, {"FLAG_TASK_ROOT", FLAG_TASK_ROOT},
        {"FLAG_START_UNKNOWN", FLAG_START_UNKNOWN}, {"CODE_CAPTURE", AI_CODE_CAPTURE},
        {"CODE_RATE", AI_CODE_RATE}, {"CODE_WAKE", AI_CODE_WAKE}, {"WIRE_FIELDS", WIRE_FIELDS},
    };
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        int64_t value;
        if (get_config_int(layout, expected[i].name, &value) < 0) {
            return -1;
        }
        if (value != expected[i].value) {
            PyErr_Format(PyExc_ValueError, "span layout changed: %s is %lld here, %d compiled",
                         expected[i].name, (long long)value, expected[i].value);
            return -1;
        }
    }
    return 0;
}

static int
read_int_tuple(PyObject *config, const char *key, int64_t *out, int capacity, int *count)
{
    PyObject *value;
    if (get_item(config, key, &value) < 0) {
        return -1;
    }
    PyObject *items = PySequence_Tuple(value);
    Py_DECREF(value);
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t size = PyTuple_Size(items);
    if (size > capacity) {
        Py_DECREF(items);
        PyErr_Format(PyExc_ValueError, "%s: more than %d values", key, capacity);
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        long long number = PyLong_AsLongLong(PyTuple_GetItem(items, i));
        if (number == -1 && PyErr_Occurred()) {
            Py_DECREF(items);
            return -1;
        }
        out[i] = number;
    }
    Py_DECREF(items);
    *count = (int)size;
    return 0;
}

static PyObject *
Hooks_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *tracker, *layout, *config;
    static char *keywords[] = {"tracker", "layout", "config", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO!O!:Hooks", keywords, &tracker,
                                     &PyDict_Type, &layout, &PyDict_Type, &config)) {
        return NULL;
    }
    if (check_layout(layout) < 0) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Hooks *h = (Hooks *)alloc(type, 0);
    if (h == NULL) {
        return NULL;
    }
    /* tp_alloc zeroed everything: a failure below leaves a valid object to deallocate. */
    h->tracker = Py_NewRef(tracker);
    if (code_table_init(&h->codes) < 0 || meter_table_init(&h->meters) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    for (int i = 0; i < N_COUNT; i++) {
        h->names[i] = PyUnicode_InternFromString(NAME_TEXTS[i]);
        if (h->names[i] == NULL) {
            goto fail;
        }
    }
    h->s_yield = PyUnicode_InternFromString("yield");
    h->s_task_prefix = PyUnicode_InternFromString("task ");
    h->s_throw_prefix = PyUnicode_InternFromString("throw ");
    h->s_open_limit = PyUnicode_InternFromString("open_span_limit");
    h->s_buffer_full = PyUnicode_InternFromString("buffer_full");
    h->s_otel_module = PyUnicode_InternFromString("opentelemetry.trace");
    if (!h->s_yield || !h->s_task_prefix || !h->s_throw_prefix || !h->s_open_limit
        || !h->s_buffer_full || !h->s_otel_module) {
        goto fail;
    }
    /* The tracker's own containers. */
    if (!(h->open = (SpanMap *)PyObject_GetAttr(tracker, NAME(h, open)))
        || !(h->task_frames = PyObject_GetAttr(tracker, NAME(h, _task_frames)))
        || !(h->task_infos = PyObject_GetAttr(tracker, NAME(h, _task_infos)))
        || !(h->dropped = PyObject_GetAttr(tracker, NAME(h, dropped)))
        || !(h->finished = PyObject_GetAttr(tracker, NAME(h, finished)))
        || !(h->finished_append = PyObject_GetAttr(h->finished, NAME(h, append)))) {
        goto fail;
    }
    PyObject *module = PyType_GetModule(type);
    PyObject *map_type = module != NULL ? PyObject_GetAttrString(module, "SpanMap") : NULL;
    if (map_type == NULL) {
        goto fail;
    }
    int is_map = (PyObject *)Py_TYPE((PyObject *)h->open) == map_type;
    Py_DECREF(map_type);
    if (!is_map || !PyDict_Check(h->task_frames) || !PyDict_Check(h->task_infos)
        || !PyDict_Check(h->dropped)) {
        PyErr_SetString(PyExc_TypeError,
                        "the tracker's `open` must be a SpanMap; its task and drop maps dicts");
        goto fail;
    }
    int64_t parent_based;
    int nslow = 0;
    if (get_item(config, "disable", &h->disable) < 0
        || get_item(config, "task_type", &h->task_type) < 0
        || get_item(config, "cancelled", &h->cancelled) < 0
        || get_item(config, "coroutine_type", &h->coroutine_type) < 0
        || get_item(config, "loop_runner", &h->loop_runner) < 0
        || get_item(config, "get_running_loop", &h->get_running_loop) < 0
        || get_item(config, "current_task", &h->current_task) < 0
        || get_item(config, "random", &h->random) < 0
        || get_item(config, "otel_parent", &h->otel_parent) < 0
        || get_config_int(config, "split_ns", &h->split_ns) < 0
        || get_config_int(config, "max_open", &h->max_open) < 0
        || get_config_int(config, "max_buffer", &h->max_buffer) < 0
        || get_config_int(config, "max_event_items", &h->max_event_items) < 0
        || get_config_int(config, "parent_based", &parent_based) < 0
        || read_int_tuple(config, "bounds", h->meters.bounds, AI_MAX_BUCKETS - 1,
                          &h->meters.nbounds) < 0
        || read_int_tuple(config, "slow_ns", h->meters.slow_ns, AI_SLOW_STEPS, &nslow) < 0) {
        goto fail;
    }
    if (nslow != AI_SLOW_STEPS) {
        PyErr_Format(PyExc_ValueError, "slow_ns: %d thresholds expected", AI_SLOW_STEPS);
        goto fail;
    }
    PyObject *ratio;
    if (get_item(config, "ratio", &ratio) < 0) {
        goto fail;
    }
    h->ratio = PyFloat_AsDouble(ratio);
    Py_DECREF(ratio);
    if (h->ratio == -1.0 && PyErr_Occurred()) {
        goto fail;
    }
    h->parent_based = parent_based != 0;
    h->next_span_id = h->next_task_id = 1;
    h->sweep_infos_at = SWEEP_INFOS_AT;
    if (!(h->info_type = PyObject_GetAttrString(module, "TaskInfo"))
        || !(h->span_type = PyObject_GetAttrString(module, "Span"))
        || !(h->walked_codes = PyList_New(0))) {
        goto fail;
    }
    h->span_alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)h->span_type, Py_tp_alloc);
    return (PyObject *)h;
fail:
    Py_DECREF(h);
    return NULL;
}

static int
Hooks_traverse(Hooks *h, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE((PyObject *)h));
    Py_VISIT(h->tracker);
    Py_VISIT(h->open);
    Py_VISIT(h->task_frames);
    Py_VISIT(h->task_infos);
    Py_VISIT(h->dropped);
    Py_VISIT(h->finished);
    Py_VISIT(h->finished_append);
    Py_VISIT(h->last_loop);
    Py_VISIT(h->get_running_loop);
    Py_VISIT(h->current_task);
    Py_VISIT(h->random);
    Py_VISIT(h->otel_parent);
    Py_VISIT(h->walked_codes);
    return 0;
}

static int
Hooks_clear(Hooks *h)
{
    Py_CLEAR(h->tracker);
    Py_CLEAR(h->open);
    Py_CLEAR(h->task_frames);
    Py_CLEAR(h->task_infos);
    Py_CLEAR(h->dropped);
    Py_CLEAR(h->finished);
    Py_CLEAR(h->finished_append);
    Py_CLEAR(h->last_loop);
    Py_CLEAR(h->get_running_loop);
    Py_CLEAR(h->current_task);
    Py_CLEAR(h->random);
    Py_CLEAR(h->otel_parent);
    Py_CLEAR(h->walked_codes);
    return 0;
}

static void
Hooks_dealloc(Hooks *h)
{
    PyTypeObject *type = Py_TYPE((PyObject *)h);
    PyObject_GC_UnTrack(h);
    Hooks_clear(h);
    Py_CLEAR(h->disable);
    Py_CLEAR(h->task_type);
    Py_CLEAR(h->cancelled);
    Py_CLEAR(h->coroutine_type);
    Py_CLEAR(h->loop_runner);
    Py_CLEAR(h->info_type);
    Py_CLEAR(h->span_type);
    for (int i = 0; i < N_COUNT; i++) {
        Py_CLEAR(h->names[i]);
    }
    Py_CLEAR(h->s_yield);
    Py_CLEAR(h->s_task_prefix);
    Py_CLEAR(h->s_throw_prefix);
    Py_CLEAR(h->s_open_limit);
    Py_CLEAR(h->s_buffer_full);
    Py_CLEAR(h->s_otel_module);
    code_table_free(&h->codes);
    meter_table_free(&h->meters);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(h);
    Py_DECREF(type);
}

#define CALLBACK(name, doc)                                                                  \
    {#name, (PyCFunction)(void (*)(void))Hooks_##name, METH_FASTCALL, PyDoc_STR(doc)}

static PyMethodDef Hooks_methods[] = {
    CALLBACK(on_start, "PY_START callback"),
    CALLBACK(on_resume, "PY_RESUME callback"),
    CALLBACK(on_throw, "PY_THROW callback"),
    CALLBACK(on_yield, "PY_YIELD callback"),
    CALLBACK(on_return, "PY_RETURN callback"),
    CALLBACK(on_unwind, "PY_UNWIND callback"),
    {"add_code", (PyCFunction)(void (*)(void))Hooks_add_code, METH_FASTCALL, add_code_doc},
    {"next_span_id", (PyCFunction)Hooks_next_span_id, METH_NOARGS, next_span_id_doc},
    {"take_meters", (PyCFunction)Hooks_take_meters, METH_NOARGS, take_meters_doc},
    {"reset", (PyCFunction)Hooks_reset, METH_NOARGS, reset_doc},
    {"now", (PyCFunction)Hooks_now, METH_NOARGS, now_doc},
    {"task_created", (PyCFunction)(void (*)(void))Hooks_task_created, METH_FASTCALL,
     task_created_doc},
    {"task_bound", (PyCFunction)(void (*)(void))Hooks_task_bound, METH_FASTCALL, task_bound_doc},
    {"info_for", (PyCFunction)Hooks_info_for, METH_O, info_for_doc},
    {"task_counts", (PyCFunction)Hooks_task_counts, METH_NOARGS, task_counts_doc},
    {"marshal_spans", (PyCFunction)Hooks_marshal_spans, METH_O, marshal_spans_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Hooks_members[] = {
    {"tasks_seen", Py_T_LONGLONG, offsetof(Hooks, tasks_seen), Py_READONLY,
     PyDoc_STR("Tasks given a TaskInfo by this object.")},
    {"next_task_id", Py_T_LONGLONG, offsetof(Hooks, next_task_id), 0,
     PyDoc_STR("The id the next TaskInfo gets.")},
    {"running", Py_T_LONGLONG, offsetof(Hooks, running), 0,
     PyDoc_STR("Spans in `open` running now; Python adds those it makes running.")},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(Hooks_doc,
             "Hooks(tracker, layout, config)\n--\n\n"
             "The sys.monitoring callbacks of one AcceleratedTracker, compiled.");

static PyType_Slot Hooks_slots[] = {
    {Py_tp_doc, (void *)Hooks_doc},
    {Py_tp_new, Hooks_new},
    {Py_tp_dealloc, Hooks_dealloc},
    {Py_tp_traverse, Hooks_traverse},
    {Py_tp_clear, Hooks_clear},
    {Py_tp_methods, Hooks_methods},
    {Py_tp_members, Hooks_members},
    {0, NULL},
};

static PyType_Spec Hooks_spec = {
    .name = "_accel.Hooks",
    .basicsize = sizeof(Hooks),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Hooks_slots,
};

/* -- the module ---------------------------------------------------------------------------- */

static int
add_type(PyObject *module, PyType_Spec *spec, const char *name)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int result = PyModule_AddObjectRef(module, name, type);
    Py_DECREF(type);
    return result;
}

static int
accel_exec(PyObject *module)
{
    if (add_type(module, &TaskInfo_spec, "TaskInfo") < 0
        || add_type(module, &Span_spec, "Span") < 0
        || add_type(module, &SpanMap_spec, "SpanMap") < 0
        || add_type(module, &Hooks_spec, "Hooks") < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(module, "ABI_VERSION", ABI_VERSION);
}

static PyModuleDef_Slot accel_slots[] = {
    {Py_mod_exec, accel_exec},
    {0, NULL},
};

PyDoc_STRVAR(accel_doc, "The agent's task tracker callbacks, compiled (see accelerator.py).");

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_accel",
    .m_doc = accel_doc,
    .m_size = 0,
    .m_slots = accel_slots,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    return PyModuleDef_Init(&accel_module);
}
