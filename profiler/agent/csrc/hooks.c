/* The sys.monitoring callbacks themselves (tracker.py: on_start, on_resume, on_throw,
 * on_yield, on_return, on_unwind, fault). The Hooks type that holds their state, and the
 * `_accel` module, are in module.c.
 *
 * PY_UNWIND and PY_THROW cannot be enabled per code object, so they arrive for every frame:
 * their callbacks return at once for code we do not trace and never return DISABLE, which
 * for these events would switch them off process-wide.
 */
#include "accel.h"

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

#ifdef AI_BENCH_RECORDS
enum { PY_START_RECORD = 1, PY_RESUME_RECORD, PY_THROW_RECORD, PY_YIELD_RECORD, PY_RETURN_RECORD,
       PY_UNWIND_RECORD };

/* A benchmark-only build (benchmarks/README.md, "The records ceiling"). Each event of traced
 * code appends one fixed-size record (what happened, the code, the frame, the time) to a
 * ring that nothing reads, and returns: no span, no task lookup, nothing sent. What a design
 * that only records events in the target, and builds spans somewhere else, could cost it at
 * best. */
typedef struct {
    int64_t kind, code_id, t;
    PyObject *frame; /* an address only, never dereferenced */
} BenchRecord;

static BenchRecord bench_ring[1 << 16];
static size_t bench_next;

static PyObject *
bench_record(Hooks *h, int kind, PyObject *code, PyObject *frame)
{
    CodeSlot *slot = code != NULL ? code_find(&h->codes, code) : NULL;
    if (slot != NULL && slot->code_id != 0) {
        BenchRecord *record = &bench_ring[bench_next++ & ((1 << 16) - 1)];
        *record = (BenchRecord){kind, slot->code_id, now_ns(), frame};
    }
    Py_RETURN_NONE;
}
#define BENCH_RECORD(kind, code, frame) return bench_record(h, (kind), (code), (frame))
#else
#define BENCH_RECORD(kind, code, frame) (void)0
#endif

/* -- the sys.monitoring callbacks ------------------------------------------------------ */

/* PY_START(code, offset): open a span, or DISABLE this code for good if it is not traced. */
AI_INTERNAL PyObject *
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
        if (slot != NULL && (slot->flags & AI_CODE_REJECTED)) {
            /* A burst switched PY_START on again where it had been disabled (bursts.py). */
            return Py_NewRef(h->disable);
        }
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
    BENCH_RECORD(PY_START_RECORD, code, frame);
#ifdef AI_BENCH_FLOOR
    /* A benchmark-only build (benchmarks/README.md, "The floor"): traced code's spans are
     * never opened, so every callback returns once it has looked the code up. What is
     * left is what being attached costs before any bookkeeping. */
    Py_RETURN_NONE;
#endif
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
    PyObject *back = frame_back(h, frame);
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
AI_INTERNAL PyObject *
Hooks_on_resume(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *frame = (PyObject *)PyEval_GetFrame();
    BENCH_RECORD(PY_RESUME_RECORD, nargs >= 1 ? args[0] : NULL, frame);
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
#ifdef AI_BENCH_FLOOR
        slot = NULL; /* no span was opened on purpose: nothing to adopt */
#endif
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
AI_INTERNAL PyObject *
Hooks_on_throw(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    forget_last(h);
    BENCH_RECORD(PY_THROW_RECORD, nargs >= 1 ? args[0] : NULL, (PyObject *)PyEval_GetFrame());
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
AI_INTERNAL PyObject *
Hooks_on_yield(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    BENCH_RECORD(PY_YIELD_RECORD, nargs >= 1 ? args[0] : NULL, (PyObject *)PyEval_GetFrame());
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
AI_INTERNAL PyObject *
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
    BENCH_RECORD(PY_RETURN_RECORD, args[0], (PyObject *)PyEval_GetFrame());
    PyObject *span = running_span(h, NULL, 1);
    if (span == NULL) {
        return done(h);
    }
    int failed = finish(h, SPAN(span), STATE_COMPLETED, now_ns(), NULL) < 0;
    Py_DECREF(span);
    return failed ? fault(h) : NONE;
}

/* PY_UNWIND(code, offset, exception): failed, or cancelled. Global: never DISABLE. */
AI_INTERNAL PyObject *
Hooks_on_unwind(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    forget_last(h);
    BENCH_RECORD(PY_UNWIND_RECORD, nargs >= 1 ? args[0] : NULL, (PyObject *)PyEval_GetFrame());
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
