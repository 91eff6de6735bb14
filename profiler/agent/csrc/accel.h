/* What the accelerator's C files share: the Hooks and TaskInfo objects, the span layout,
 * and the Span object. See accelerator.py for the design; each C function
 * is named after the Tracker method it mirrors (tracker.py, taskbook.py, codebook.py).
 */
#ifndef ASYNC_INSPECT_ACCEL_H
#define ASYNC_INSPECT_ACCEL_H

#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030C0000 /* one binary for every CPython from 3.12 on (abi3) */
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#include "tables.h"

#if !defined(__linux__)
#error "the accelerator's clock is CLOCK_MONOTONIC, which is time.perf_counter_ns on Linux only"
#endif

#define AI_INTERNAL __attribute__((visibility("hidden")))

/* Times are ns since boot: longs on Linux's LP64, whose conversions are the fast ones. */
_Static_assert(sizeof(long) == sizeof(int64_t), "an LP64 platform");

/* Bumped whenever what accelerator.py passes in or expects back changes. */
#define ABI_VERSION 8

/* Span list positions (spans.py); checked against Python's when a Hooks is made. */
enum {
    ID, PARENT_ID, TRACE, TASK, CODE, THREAD, START, END, STATE, POLLS, BUSY, EVENTS,
    EVENTS_DROPPED, ERROR, TASK_NAME, PARENT_TASK, LINK, REMOTE, FLAGS, ATTRS,
    RESUMED, PARENT, CHILD, SAMPLED, TASK_INFO, BLOCKED_AT, SPAN_LEN
};
/* A span's first WIRE_FIELDS items are its wire record (wire.SPAN_FIELDS). */
#define WIRE_FIELDS (ATTRS + 1)
/* wire.py values; checked too. */
enum { EVENT_POLL = 1, EVENT_WAKE = 2, EVENT_BLOCKED = 3, EVENT_COMPLETED = 4 };
enum { STATE_COMPLETED = 1, STATE_FAILED = 2, STATE_CANCELLED = 3, STATE_RUNNING = 4 };
enum { FLAG_TASK_ROOT = 1, FLAG_START_UNKNOWN = 2 };

#define MAX_WALK 64
/* Frames an await chain passes through: coroutines, generators, async generators. */
#define CHAIN_FLAGS (0x0020 | 0x0080 | 0x0100 | 0x0200)
#define FACTORY_CHECK_EVERY 256
/* Tasks in task_frames pending_task_runs asks whether they run; past that, on_start walks. */
#define MAX_PENDING_ASKED 8
/* Code objects whose co_flags a parent walk remembers (each kept alive meanwhile). */
#define MAX_WALKED_CODES 4096

/* Names looked up or called on Python objects, interned once per Hooks. */
#define AI_NAMES(X)                                                                       \
    X(f_back) X(co_flags) X(cr_frame) X(get_coro) X(get_name) X(on_new_loop)              \
    X(_consider_at_start) X(_adopt) X(_capture) X(_sample) X(_describe_error) X(fault)     \
    X(dropped) X(open) X(_task_frames) X(_task_infos)                                       \
    X(finished) X(append) X(creator) X(id) X(ref) X(thread) X(name) X(creator_task)            \
    X(cr_running)
#define AI_NAME_ENUM(n) N_##n,
enum { AI_NAMES(AI_NAME_ENUM) N_COUNT };

typedef struct Span Span;
enum { LAST_NONE, LAST_RESUME, LAST_YIELD };

/* The open spans by frame: AcceleratedTracker.open (spanmap.c). */
typedef struct {
    PyObject *frame; /* NULL: an empty slot */
    PyObject *span;
} MapSlot;

typedef struct {
    PyObject_HEAD
    MapSlot *slots;
    size_t capacity, used;
    int weak_keys; /* keys are addresses only (Hooks.task_infos) */
} SpanMap;

typedef struct {
    PyObject_HEAD
    PyObject *tracker;
    /* The tracker's containers: shared with its Python code, cleared but never replaced. */
    SpanMap *open; /* the tracker's `open` */
    PyObject *task_frames, *dropped;
    SpanMap *task_infos; /* TaskInfos by task (weak keys): the tracker's `_task_infos` */
    PyObject *finished, *finished_append;
    /* Objects compared with or called. */
    PyObject *disable, *task_type, *cancelled, *loop_runner, *info_type, *coroutine_type;
    /* frame.f_back's descriptor and its getter: frame_back() calls it without an attribute
     * lookup through the frame type's MRO. */
    PyObject *frame_type, *back_descr;
    descrgetfunc back_get;
    PyObject *get_running_loop, *current_task, *random, *otel_parent;
    PyObject *last_loop;    /* Tracker._last_loop */
    PyObject *walked_codes; /* list keeping alive the codes whose co_flags are cached */
    PyObject *span_type;    /* _accel.Span */
    allocfunc span_alloc;   /* its tp_alloc */
    int have_thread;        /* thread_native and thread_ident are set */
    unsigned long thread_native;
    unsigned long thread_ident; /* pthread_self() of that thread: gettid() is a system call */
    PyObject *names[N_COUNT];
    PyObject *s_yield, *s_task_prefix, *s_throw_prefix, *s_open_limit;
    PyObject *s_otel_module;
    int64_t split_ns, max_open, max_buffer, max_event_items;
    int64_t next_span_id, next_task_id, tasks_seen;
    /* Finished spans dropped because the buffer was full, since take_dropped last ran: an
     * overloaded app drops most of its spans, so this count is not a dict entry. */
    int64_t buffer_full_drops;
    /* Spans in `open` whose coroutine runs now (RESUMED set), on any thread. Every frame on
     * a stack is running, so while this is 0 no span of ours is on any stack: a new span
     * has no parent or creator to find there, and on_start skips the frame walk (which
     * makes CPython create a frame object per step) unless a task the factory made, not
     * started in our code yet, runs now (pending_task_runs). Never too low: each change follows
     * a RESUMED change of a span in `open`; Python adds the spans it makes running
     * (Tracker._became_running). */
    int64_t running;
    /* The last callback, when it resumed or suspended a span (chain_time in hooks.c):
     * LAST_RESUME or LAST_YIELD, that span (compared by address only) and its time. */
    int last_kind;
    Span *last_span;
    int64_t last_t;
    double ratio;
    int parent_based;
    int factory_checks;
    /* Where an asyncio.Task keeps its name, in bytes from its start: 0 not learnt yet, -1
     * not found (taskinfo.c: info_name). */
    Py_ssize_t task_name_at;
    CodeTable codes;
    WakeTable wakes;
    MeterTable meters;
} Hooks;

#define NAME(h, n) ((h)->names[N_##n])

/* frame.f_back: a new reference to a frame or to None; NULL with an exception. */
static inline PyObject *
frame_back(Hooks *h, PyObject *frame)
{
    if (h->back_get != NULL && (PyObject *)Py_TYPE(frame) == h->frame_type) {
        return h->back_get(h->back_descr, frame, h->frame_type);
    }
    return PyObject_GetAttr(frame, NAME(h, f_back));
}

/* An asyncio task as the tracker knows it: spans.TaskInfo, with the same attributes and
 * name(), made by the C for every task (the factory's too) when accelerated.
 *
 * A task the factory saw has a weak reference whose callback is its TaskInfo itself
 * (Tracker._forget_task): calling it removes the task's entries, `task` from task_infos
 * and `frame` from task_frames, where `hooks` keeps them. No map from weak references
 * to entries is needed, nor a tuple per task. */
typedef struct {
    PyObject_HEAD
    int64_t id;
    int64_t creator_task;
    int64_t thread;
    PyObject *creator; /* the span that created the task, or None */
    PyObject *ref;     /* weak reference to the task, or None */
    PyObject *hooks;   /* until the task is forgotten: the Hooks it is known to, or NULL */
    PyObject *task;    /* its key in task_infos (the task's address, not held), or NULL */
    PyObject *frame;   /* its key in task_frames (its coroutine's frame), or NULL */
    PyObject *coro;    /* while `frame` is set, its coroutine (if a plain one), or NULL */
} TaskInfo;

static inline int64_t
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The callbacks' clock: CLOCK_MONOTONIC, or the time-stamp counter mapped to it where the
 * kernel trusts that counter (clock.c). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define AI_HAVE_TSC 1
#include <x86intrin.h>
#else
#define AI_HAVE_TSC 0
#endif

typedef struct {
    int enabled;       /* 0: clock_gettime */
    uint64_t base_tsc; /* the counter at base_ns */
    int64_t base_ns;
    uint64_t mult; /* ns per tick, 32.32 fixed point */
} TscClock;
AI_INTERNAL extern TscClock ai_clock;

#if AI_HAVE_TSC
static inline int64_t
tsc_ns(uint64_t tsc)
{
    int64_t ticks = (int64_t)(tsc - ai_clock.base_tsc);
    return ai_clock.base_ns + (int64_t)(((__int128)ticks * (__int128)ai_clock.mult) >> 32);
}
#endif

static inline int64_t
now_ns(void)
{
#if AI_HAVE_TSC
    if (ai_clock.enabled) {
        return tsc_ns(__rdtsc());
    }
#endif
    return mono_ns();
}

AI_INTERNAL PyObject *clock_tick(PyObject *module, PyObject *ignored);
AI_INTERNAL PyObject *clock_allow(PyObject *module, PyObject *allowed);

/* -- references to None --------------------------------------------------------------- */

/* None is immortal on every CPython this binary serves (3.12 on, PEP 683), which CPython's
 * own Py_RETURN_NONE relies on: its count never changes. The limited API makes Py_INCREF
 * and Py_DECREF out-of-line calls, so the hot paths skip them for None (NONE is a reference
 * to None that was never counted; giving it away or dropping it is the same no-op). */
#define NONE Py_None

static inline PyObject *
new_ref(PyObject *obj)
{
    if (obj != Py_None) {
        Py_INCREF(obj);
    }
    return obj;
}

static inline void
drop_ref(PyObject *obj)
{
    if (obj != NULL && obj != Py_None) {
        Py_DECREF(obj);
    }
}

/* -- calls -------------------------------------------------------------------------------- */

static inline PyObject *
call_one(PyObject *callable, PyObject *arg)
{
    PyObject *args[2] = {NULL, arg};
    return PyObject_Vectorcall(callable, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* obj.name(*args) with up to two arguments (b may be NULL, then a may be too). */
static inline PyObject *
call_method_of(PyObject *obj, PyObject *name, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {obj, a, b};
    size_t count = a == NULL ? 1 : b == NULL ? 2 : 3;
    return PyObject_VectorcallMethod(name, args, count | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* *out = int(obj.name); 0, or -1 with an exception. */
static inline int
int_attr(PyObject *obj, PyObject *name, int64_t *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    long long number = value != NULL ? PyLong_AsLongLong(value) : -1;
    Py_XDECREF(value);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = number;
    return 0;
}

/* tracker.name(a, b): the tracker's Python, for what happens once per code, task or error. */
static inline PyObject *
call_method(Hooks *h, PyObject *name, PyObject *a, PyObject *b)
{
    return call_method_of(h->tracker, name, a, b);
}

/* -- span.c ----------------------------------------------------------------------------- */

/* A span: spans.py's 26-item list, compiled. Each position holds an int64 or an object
 * (FIELD_KINDS in span.c); EVENTS is a C array. Python reads and writes it by position as
 * it would the list (span[i], span[i] = v, span[:n], list(span)), converting each value;
 * the C reads and writes the fields, with no int object made per value.
 *
 * Not tracked by the cyclic GC, as the span lists were not: a busy app makes tens of
 * thousands a second and the buffer holds them up to a second. They form no cycle that
 * outlives them: a parent's CHILD is cleared when the child finishes, and what they hold
 * (ints, strings, tuples, TaskInfo, their parent) never points back into a descendant. */
typedef struct {
    int64_t when;
    PyObject *detail; /* a str or None */
    int kind;
} Event;

typedef union {
    int64_t i;
    PyObject *o;
} Field;

struct Span {
    PyObject_VAR_HEAD  /* ob_size: the events `room` holds */
    Field f[SPAN_LEN]; /* f[EVENTS] unused; f[SAMPLED].i and f[LINK].i are 0 or 1 */
    int64_t link[2];   /* LINK, when f[LINK].i: the (trace, span) it links to */
    Event *events;     /* EVENTS, when `has_events` (else None): `room`, or a heap array */
    int32_t nevents, capacity;
    int has_events;
    Event room[]; /* a sampled span's first events, in the span's own allocation */
};

/* What each position holds (span.c), for the code that walks all of them. */
enum { KIND_INT, KIND_OBJECT, KIND_BOOL, KIND_EVENTS, KIND_LINK };
AI_INTERNAL extern const unsigned char FIELD_KINDS[SPAN_LEN];

#define SPAN(o) ((Span *)(o))
#define EVENT_ITEMS(s) (3 * (int64_t)(s)->nevents) /* its length as a flat list */
/* Room for a sampled span's events: `poll`, `blocked`, a second poll and the outcome. */
#define EVENT_ROOM 4

AI_INTERNAL extern PyType_Spec Span_spec;
AI_INTERNAL PyObject *span_new(Hooks *h, int sampled);
AI_INTERNAL int span_event(Span *span, int kind, int64_t when, PyObject *detail);
AI_INTERNAL void span_set(Span *span, int field, PyObject *value);

static inline int
is_span(Hooks *h, PyObject *obj)
{
    return (PyObject *)Py_TYPE(obj) == h->span_type;
}

/* -- spanmap.c -------------------------------------------------------------------------- */

AI_INTERNAL extern PyType_Spec SpanMap_spec;
AI_INTERNAL PyObject *map_get(const SpanMap *map, PyObject *frame);
AI_INTERNAL int map_put(SpanMap *map, PyObject *frame, PyObject *span);
AI_INTERNAL PyObject *map_pop(SpanMap *map, PyObject *frame);
AI_INTERNAL int map_discard(SpanMap *map, PyObject *key, PyObject *value);

/* -- hooks.c ---------------------------------------------------------------------------- */

AI_INTERNAL PyObject *fault(Hooks *h);
#define AI_CALLBACK(name)                                                                     \
    AI_INTERNAL PyObject *Hooks_##name(Hooks *h, PyObject *const *args, Py_ssize_t nargs);
AI_CALLBACK(on_start)
AI_CALLBACK(on_resume)
AI_CALLBACK(on_throw)
AI_CALLBACK(on_yield)
AI_CALLBACK(on_return)
AI_CALLBACK(on_unwind)

/* -- calls.c, module.c ---------------------------------------------------------------------- */

AI_INTERNAL extern PyMethodDef Hooks_methods[];
AI_INTERNAL extern PyMemberDef Hooks_members[];

/* -- taskinfo.c ----------------------------------------------------------------------- */

AI_INTERNAL extern PyType_Spec TaskInfo_spec;
AI_INTERNAL PyObject *new_task_info(PyTypeObject *type, int64_t task_id, PyObject *creator,
                                    int64_t creator_task);
AI_INTERNAL int discard_key(PyObject *dict, PyObject *key, PyObject *value);
AI_INTERNAL PyObject *info_name(Hooks *h, PyObject *info);
AI_INTERNAL int info_id(Hooks *h, PyObject *info, int64_t *out);
AI_INTERNAL PyObject *name_field(Hooks *h, PyObject *task);
AI_INTERNAL int64_t name_number(PyObject *name);
AI_INTERNAL int64_t default_name_number(Hooks *h, PyObject *task);
AI_INTERNAL int info_creator_task(Hooks *h, PyObject *info, int64_t *out);
AI_INTERNAL PyObject *info_creator(Hooks *h, PyObject *info);
AI_INTERNAL PyObject *info_ref(Hooks *h, PyObject *info);
AI_INTERNAL int set_info_ref(Hooks *h, PyObject *info, PyObject *ref);

static inline int
is_task_info(Hooks *h, PyObject *info)
{
    return (PyObject *)Py_TYPE(info) == h->info_type;
}

/* -- tasks.c ---------------------------------------------------------------------------- */

AI_INTERNAL PyObject *find_open_span(Hooks *h, PyObject *frame);
AI_INTERNAL PyObject *info_for(Hooks *h, PyObject *task);
AI_INTERNAL PyObject *unseen_task_info(Hooks *h, PyObject *task, int64_t *task_id);
AI_INTERNAL PyObject *named_task_name(Hooks *h, PyObject *ref, int64_t task_id);
AI_INTERNAL PyObject *task_created(Hooks *h, PyObject *coro, PyObject *frame);
AI_INTERNAL int task_bound(Hooks *h, PyObject *info, PyObject *task, PyObject *coro);
/* Where a new span belongs (find_parent), as new references: its parent span or None; the
 * TaskInfo of the task it is the first span of, or None; for the first span of a task the
 * factory did not see, that task (`unseen`, given an id only once one of its spans is
 * sampled: open_span, unseen_task_info), else None; and whether the parent awaits it in
 * the same task. */
typedef struct {
    PyObject *parent, *info, *unseen;
    int same_task;
} Parentage;

AI_INTERNAL int find_parent(Hooks *h, PyObject *frame, PyObject *back, Parentage *out);
AI_INTERNAL int64_t running_task_id(Hooks *h);
AI_INTERNAL int task_counts(Hooks *h, int64_t *live, int64_t *running, int64_t *oldest);
AI_INTERNAL int pending_task_runs(Hooks *h);

/* -- spans.c ---------------------------------------------------------------------------- */

AI_INTERNAL int open_child(Hooks *h, PyObject *frame, Span *parent, int64_t code_id,
                           int code_flags, int64_t t);
AI_INTERNAL PyObject *open_span(Hooks *h, PyObject *frame, PyObject *back, int64_t code_id,
                                int code_flags, int64_t t);
AI_INTERNAL int finish(Hooks *h, Span *span, int state, int64_t t, PyObject *exc);
AI_INTERNAL int record_poll(Hooks *h, Span *span, int64_t t, PyObject *detail);
AI_INTERNAL PyObject *describe_awaited(Hooks *h, PyObject *value);
AI_INTERNAL int drop(Hooks *h, PyObject *reason);

/* -- marshal.c -------------------------------------------------------------------------- */

AI_INTERNAL PyObject *marshal_spans(Hooks *h, PyObject *spans);

#endif
