/* Tasks: the task factory's bookkeeping, and where a new span's parent is (taskbook.py:
 * task_created, task_bound, info_for, _running_task, running_task_id, find_open_span;
 * tracker.py: _find_parent; TaskInfo itself is in taskinfo.c).
 *
 * A server like aiohttp makes one asyncio task per request, outside any task factory, so
 * a request's first span meets a task never seen: its TaskInfo, weak reference and
 * clean-up on the task's death are here, not in Python.
 */
#include "accel.h"

/* getattr(coro, "cr_frame", None) */
static PyObject *
coro_frame(Hooks *h, PyObject *coro)
{
    PyObject *frame = PyObject_GetAttr(coro, NAME(h, cr_frame));
    if (frame == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return Py_NewRef(Py_None);
    }
    return frame;
}

/* -- the factory's bookkeeping ------------------------------------------------------------- */

/* A TaskInfo's id: odd, counted. A task known by its default name `Task-N` alone (below,
 * unseen_task_info) has 2N: C's asyncio.Task numbers the tasks it names, one counter per
 * interpreter, so the two never meet. */
static int64_t
take_task_id(Hooks *h)
{
    int64_t task_id = h->next_task_id;
    h->next_task_id += 2;
    return task_id;
}

/* Tracker.find_open_span: a new reference to a span, or to None. `frame` is borrowed. */
AI_INTERNAL PyObject *
find_open_span(Hooks *h, PyObject *frame)
{
    Py_INCREF(frame);
    for (int i = 0; i < MAX_WALK && frame != Py_None; i++) {
        PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
        int runner = (PyObject *)code == h->loop_runner;
        Py_DECREF(code);
        if (runner) {
            break; /* below the event loop's callback runner are no spans of ours */
        }
        PyObject *span = map_get(h->open, frame);
        if (span != NULL) {
            Py_DECREF(frame);
            return Py_NewRef(span);
        }
        PyObject *back = frame_back(h, frame);
        Py_DECREF(frame);
        if (back == NULL) {
            return NULL;
        }
        frame = back;
    }
    Py_DECREF(frame);
    Py_RETURN_NONE;
}

/* Tracker.task_created: called by the task factory before the task exists. */
AI_INTERNAL PyObject *
task_created(Hooks *h, PyObject *coro, PyObject *frame)
{
    PyObject *creator = find_open_span(h, frame);
    if (creator == NULL) {
        return NULL;
    }
    int64_t creator_task = is_span(h, creator) ? SPAN(creator)->f[TASK].i : 0;
    if (creator_task == 0 && is_span(h, creator) && !SPAN(creator)->f[SAMPLED].i) {
        /* Unsampled, in a task the factory did not see: no TaskInfo was made for it. The
         * creator runs in the task running now; its id is what a sampled descendant shows. */
        creator_task = running_task_id(h);
        if (creator_task < 0) {
            Py_DECREF(creator);
            return NULL;
        }
    }
    PyObject *info = new_task_info((PyTypeObject *)h->info_type, take_task_id(h), creator,
                                   creator_task);
    Py_DECREF(creator);
    if (info == NULL) {
        return NULL;
    }
    h->tasks_seen++;
    PyObject *own_frame = coro_frame(h, coro);
    if (own_frame == NULL
        || (own_frame != Py_None && PyDict_SetItem(h->task_frames, own_frame, info) < 0)) {
        Py_XDECREF(own_frame);
        Py_DECREF(info);
        return NULL;
    }
    if (own_frame != Py_None) {
        ((TaskInfo *)info)->frame = own_frame; /* the reference coro_frame gave */
        if ((PyObject *)Py_TYPE(coro) == h->coroutine_type) { /* asked by pending_task_runs */
            ((TaskInfo *)info)->coro = Py_NewRef(coro);
        }
    }
    else {
        Py_DECREF(own_frame);
    }
    return info;
}

/* Tracker.task_bound: remember `task` for `info` (made by task_created) until the task is
 * freed, when the weak reference calls `info` back. */
AI_INTERNAL int
task_bound(Hooks *h, PyObject *info_obj, PyObject *task, PyObject *coro)
{
    if (!is_task_info(h, info_obj)) {
        PyErr_SetString(PyExc_TypeError, "task_bound: not a TaskInfo of task_created");
        return -1;
    }
    TaskInfo *info = (TaskInfo *)info_obj;
    PyObject *ref = PyWeakref_NewRef(task, info_obj);
    if (ref == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        PyErr_Clear(); /* a task class without weakref support: never forgotten early */
        return set_info_ref(h, info_obj, Py_None);
    }
    if (set_info_ref(h, info_obj, ref) < 0 || map_put(h->task_infos, task, info_obj) < 0) {
        Py_DECREF(ref);
        return -1;
    }
    Py_DECREF(ref);
    PyObject *old_hooks = info->hooks;
    info->task = task;
    info->hooks = Py_NewRef((PyObject *)h);
    Py_XDECREF(old_hooks);
    (void)coro; /* its frame was remembered by task_created */
    return 0;
}

/* Tracker.info_for: the TaskInfo of a task the factory did not see, bound as task_bound
 * binds the factory's: its weak reference calls it back when the task is freed, and its
 * entry goes at once. A server makes one such task per request; against dead entries left
 * for a sweep every 1,024, the callback costs a W2 request nothing measurable (side by
 * side: 1.00 [0.96-1.04] at 1 % sampling, 1.00 [0.96-1.02] at full capture). */
AI_INTERNAL PyObject *
info_for(Hooks *h, PyObject *task)
{
    PyObject *info = map_get(h->task_infos, task);
    if (info != NULL) {
        PyObject *ref = info_ref(h, info);
        PyObject *referent = ref == NULL      ? NULL
                             : ref == Py_None ? Py_NewRef(Py_None)
                                              : PyObject_CallNoArgs(ref);
        Py_XDECREF(ref);
        if (referent == NULL) {
            return NULL;
        }
        Py_DECREF(referent); /* compared by identity only; `task` holds it */
        if (referent == task) {
            return Py_NewRef(info);
        }
    }
    info = new_task_info((PyTypeObject *)h->info_type, take_task_id(h), Py_None, 0);
    if (info == NULL) {
        return NULL;
    }
    h->tasks_seen++;
    if (task_bound(h, info, task, Py_None) < 0) {
        Py_DECREF(info);
        return NULL;
    }
    return info;
}

/* 2N for a task the factory did not see that has no TaskInfo and has its default name
 * `Task-N` (as the int N, or formatted); else 0. -1 with an exception. */
static int64_t
named_task_id(Hooks *h, PyObject *task)
{
    if (map_get(h->task_infos, task) != NULL) {
        return 0;
    }
    int64_t number = default_name_number(h, task);
    return number > 0 ? 2 * number : number;
}

/* What a recorded span of a task the factory did not see keeps as its TASK_INFO (a new
 * reference), and the task's id. While the task has its default name `Task-N` and no
 * TaskInfo: a weak reference to it, with no callback, and the id 2N. Nothing is then kept
 * per task, nor forgotten when it goes: a server like aiohttp makes one such task per
 * request, and its TaskInfo, weak reference callback and entry cost ~1,700 instructions
 * (side by side, W2 ~2.5 % of throughput). Else its TaskInfo (info_for). */
AI_INTERNAL PyObject *
unseen_task_info(Hooks *h, PyObject *task, int64_t *task_id)
{
    int64_t named = named_task_id(h, task);
    if (named < 0) {
        return NULL;
    }
    if (named > 0) {
        PyObject *ref = PyWeakref_NewRef(task, NULL);
        if (ref != NULL) {
            *task_id = named;
            return ref;
        }
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return NULL;
        }
        PyErr_Clear(); /* not weakly referable after all: a TaskInfo, never forgotten early */
    }
    PyObject *info = info_for(h, task);
    if (info != NULL && info_id(h, info, task_id) < 0) {
        Py_CLEAR(info);
    }
    return info;
}

/* The task name for finish_sampled of a span whose TASK_INFO is a weak reference to its
 * task (unseen_task_info): where the task keeps it, read now, or N once the task is gone.
 * A task renamed since gets a TaskInfo under the same id, for its next spans to find (one
 * renamed between two of its spans, by code we do not trace, gets a new id instead). */
AI_INTERNAL PyObject *
named_task_name(Hooks *h, PyObject *ref, int64_t task_id)
{
    PyObject *task = PyObject_CallNoArgs(ref);
    if (task == NULL) {
        return NULL;
    }
    PyObject *name = task != Py_None ? Py_XNewRef(name_field(h, task)) : NULL;
    if (name != NULL && 2 * name_number(name) != task_id && map_get(h->task_infos, task) == NULL) {
        PyObject *info = new_task_info((PyTypeObject *)h->info_type, task_id, Py_None, 0);
        if (info == NULL || task_bound(h, info, task, Py_None) < 0) {
            Py_CLEAR(name);
        }
        h->tasks_seen += info != NULL;
        Py_XDECREF(info);
    }
    Py_DECREF(task);
    if (name == NULL && PyErr_Occurred()) {
        return NULL;
    }
    return name != NULL ? name : PyLong_FromLongLong(task_id / 2);
}

/* Tracker._running_task: a new reference to the task running now, or to None. */
static PyObject *
running_task(Hooks *h)
{
    PyObject *loop = PyObject_CallNoArgs(h->get_running_loop);
    if (loop == NULL || loop == Py_None) {
        return loop;
    }
    if (loop != h->last_loop || h->factory_checks == 0) {
        /* A new loop, or now and then in case the app replaced our task factory. */
        PyObject *old = h->last_loop;
        h->last_loop = Py_NewRef(loop);
        Py_XDECREF(old);
        h->factory_checks = FACTORY_CHECK_EVERY;
        PyObject *callback = PyObject_GetAttr(h->tracker, NAME(h, on_new_loop));
        PyObject *result = callback == NULL      ? NULL
                           : callback == Py_None ? Py_NewRef(Py_None)
                                                 : call_one(callback, loop);
        Py_XDECREF(callback);
        if (result == NULL) {
            Py_DECREF(loop);
            return NULL;
        }
        Py_DECREF(result);
    }
    h->factory_checks--;
    PyObject *task = call_one(h->current_task, loop);
    Py_DECREF(loop);
    return task;
}

/* Tracker.running_task_id: the id of the task running now (its TaskInfo made if need be),
 * 0 if none; -1 with an exception. */
AI_INTERNAL int64_t
running_task_id(Hooks *h)
{
    PyObject *task = running_task(h);
    if (task == NULL || task == Py_None) {
        Py_XDECREF(task);
        return task == NULL ? -1 : 0;
    }
    int64_t named = named_task_id(h, task);
    if (named != 0) {
        Py_DECREF(task);
        return named;
    }
    PyObject *info = info_for(h, task);
    Py_DECREF(task);
    if (info == NULL) {
        return -1;
    }
    int64_t task_id = 0;
    int failed = info_id(h, info, &task_id) < 0;
    Py_DECREF(info);
    return failed ? -1 : task_id;
}

/* frame.f_code.co_flags & CHAIN_FLAGS, remembered per code object. */
static int
in_await_chain(Hooks *h, PyObject *frame)
{
    PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
    CodeSlot *slot = code_find(&h->codes, code);
    if (slot != NULL && (slot->flags & AI_CODE_CHAIN_KNOWN)) {
        Py_DECREF(code);
        return (slot->flags & AI_CODE_CHAIN) != 0;
    }
    PyObject *flags = PyObject_GetAttr((PyObject *)code, NAME(h, co_flags));
    long value = flags != NULL ? PyLong_AsLong(flags) : -1;
    Py_XDECREF(flags);
    if (value == -1 && PyErr_Occurred()) {
        Py_DECREF(code);
        return -1;
    }
    int chain = (value & CHAIN_FLAGS) != 0;
    /* The code must outlive its entry: kept in walked_codes (bounded) unless traced. */
    if (slot != NULL || PyList_Size(h->walked_codes) < MAX_WALKED_CODES) {
        if ((slot == NULL && PyList_Append(h->walked_codes, (PyObject *)code) < 0)
            || code_put(&h->codes, code, 0, AI_CODE_CHAIN_KNOWN | (chain ? AI_CODE_CHAIN : 0))
                   < 0) {
            PyErr_Clear(); /* only a cache */
        }
    }
    Py_DECREF(code);
    return chain;
}

/* The parent of a task's first span when the factory did not see the task: `creator`
 * (a new reference, consumed; the span below that started it eagerly, or None), and the
 * task itself, running now (open_span gives it a TaskInfo if the span is sampled). */
static int
unseen_task(Hooks *h, PyObject *creator, Parentage *out)
{
    PyObject *task = creator != NULL ? running_task(h) : NULL;
    if (task == NULL) {
        Py_XDECREF(creator);
        return -1;
    }
    out->parent = creator;
    out->info = Py_NewRef(Py_None);
    out->unseen = task;
    return 0;
}

/* Tracker._find_parent: fills `out` with new references (see Parentage). `back` is
 * frame.f_back (borrowed), or NULL: no span of ours is running, so none is on the stack
 * and no walk is needed. */
AI_INTERNAL int
find_parent(Hooks *h, PyObject *frame, PyObject *back, Parentage *out)
{
    out->same_task = 0;
    /* Tasks created by the factory whose coroutine has not started yet: mostly none. */
    int pending = PyDict_Size(h->task_frames) > 0;
    PyObject *info = pending ? PyDict_GetItemWithError(h->task_frames, frame) : NULL;
    if (info != NULL) { /* this coroutine is the task's own: a task root */
        Py_INCREF(info);
        PyObject *creator = info_creator(h, info);
        if (creator == NULL || discard_key(h->task_frames, frame, info) < 0) {
            Py_XDECREF(creator);
            Py_DECREF(info);
            return -1;
        }
        if (is_task_info(h, info)) {
            Py_CLEAR(((TaskInfo *)info)->frame); /* nothing left to forget there */
            Py_CLEAR(((TaskInfo *)info)->coro);
        }
        out->parent = creator;
        out->info = info;
        out->unseen = Py_NewRef(Py_None);
        return 0;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    if (back == NULL) {
        return unseen_task(h, Py_NewRef(Py_None), out);
    }
    Py_INCREF(back);
    for (int i = 0; i < MAX_WALK && back != Py_None; i++) {
        PyObject *span = map_get(h->open, back);
        if (span != NULL) {
            Py_DECREF(back);
            out->parent = Py_NewRef(span);
            out->info = Py_NewRef(Py_None);
            out->unseen = Py_NewRef(Py_None);
            out->same_task = 1;
            return 0;
        }
        info = pending ? PyDict_GetItemWithError(h->task_frames, back) : NULL;
        if (info != NULL) { /* a library coroutine runs the task; we are its first app span */
            PyObject *creator = info_creator(h, info);
            if (creator == NULL) {
                goto fail;
            }
            Py_DECREF(back);
            out->parent = creator;
            out->info = Py_NewRef(info);
            out->unseen = Py_NewRef(Py_None);
            return 0;
        }
        if (PyErr_Occurred()) {
            goto fail;
        }
        int chain = in_await_chain(h, back);
        if (chain < 0) {
            goto fail;
        }
        if (!chain) {
            break; /* left the await chain (the event loop called the task's step) */
        }
        PyObject *next = frame_back(h, back);
        Py_DECREF(back);
        back = next;
        if (back == NULL) {
            return -1;
        }
    }
    /* A task our factory did not see. If it started eagerly, its creator is still on the
     * stack below; if the event loop called its step, find_open_span stops right there. */
    PyObject *creator = find_open_span(h, back);
    Py_DECREF(back);
    return unseen_task(h, creator, out);
fail:
    Py_DECREF(back);
    return -1;
}

/* Tracker.task_counts: tasks whose first span is open (the task is live), those of them
 * running now, and the earliest time one of these resumed. A walk over the open spans at
 * each stats frame, instead of a map of task roots kept up to date for every task. */
AI_INTERNAL int
task_counts(Hooks *h, int64_t *live, int64_t *running, int64_t *oldest)
{
    *live = *running = *oldest = 0;
    for (size_t i = 0; i < h->open->capacity; i++) {
        PyObject *span = h->open->slots[i].span;
        if (span == NULL || !is_span(h, span) || !(SPAN(span)->f[FLAGS].i & FLAG_TASK_ROOT)) {
            continue; /* not a task's first span */
        }
        int64_t resumed = SPAN(span)->f[RESUMED].i;
        ++*live;
        if (resumed) {
            ++*running;
            *oldest = *running == 1 || resumed < *oldest ? resumed : *oldest;
        }
    }
    return 0;
}

/* Whether a task the factory made, whose coroutine has not opened a span, runs now. Its
 * coroutine is then on this stack (a library coroutine running the task: `await` in
 * asyncio.wait_for, aiohttp's connection handler on 3.14), and a new span must walk the
 * stack down to it (find_parent). While none runs, no frame in task_frames is on any
 * stack, and on_start need not walk: a server keeps such tasks pending all along (its
 * listeners, finished tasks not freed yet), which must not cost each request a walk.
 * 1, 0, or -1 with an exception; 1 too for anything it cannot ask cheaply. */
AI_INTERNAL int
pending_task_runs(Hooks *h)
{
    Py_ssize_t size = PyDict_Size(h->task_frames);
    if (size == 0) {
        return 0;
    }
    if (size > MAX_PENDING_ASKED) {
        return 1;
    }
    Py_ssize_t pos = 0;
    PyObject *frame, *info;
    while (PyDict_Next(h->task_frames, &pos, &frame, &info)) {
        PyObject *coro = is_task_info(h, info) ? ((TaskInfo *)info)->coro : NULL;
        if (coro == NULL) {
            return 1;
        }
        /* A plain coroutine's getter: no Python code runs while we iterate. */
        PyObject *running = PyObject_GetAttr(coro, NAME(h, cr_running));
        if (running == NULL) {
            return -1;
        }
        int runs = running != Py_False;
        Py_DECREF(running);
        if (runs) {
            return 1;
        }
    }
    return 0;
}
