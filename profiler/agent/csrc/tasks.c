/* Tasks: TaskInfo, the task factory's bookkeeping, and where a new span's parent is
 * (tracker.py: task_created, task_bound, _forget_task, info_for, _current_task_info,
 * find_open_span, _find_parent).
 *
 * A server like aiohttp makes one asyncio task per request, outside any task factory, so
 * a request's first span meets a task never seen: its TaskInfo, weak reference and
 * clean-up on the task's death are here, not in Python.
 */
#include <stddef.h>

#include "accel.h"

/* -- TaskInfo ------------------------------------------------------------------------------ */

static PyObject *
new_task_info(PyTypeObject *type, int64_t task_id, PyObject *creator)
{
    int64_t creator_task = 0;
    if (creator != Py_None && get_int(creator, TASK, &creator_task) < 0) {
        return NULL;
    }
    TaskInfo *info = (TaskInfo *)PyType_GenericAlloc(type, 0);
    if (info == NULL) {
        return NULL;
    }
    info->id = task_id;
    info->creator_task = creator_task;
    info->creator = Py_NewRef(creator);
    info->ref = Py_NewRef(Py_None);
    return (PyObject *)info;
}

static PyObject *
TaskInfo_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    long long task_id;
    PyObject *creator;
    static char *keywords[] = {"task_id", "creator", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LO:TaskInfo", keywords, &task_id,
                                     &creator)) {
        return NULL;
    }
    return new_task_info(type, task_id, creator);
}

static inline int
is_task_info(Hooks *h, PyObject *info)
{
    return (PyObject *)Py_TYPE(info) == h->info_type;
}

/* TaskInfo.name(): the asyncio task name now (it may be set after creation), or None if
 * the task is gone or its class has no usable get_name. */
static PyObject *
task_name(PyObject *ref, PyObject *get_name)
{
    if (ref == NULL || ref == Py_None) {
        Py_RETURN_NONE;
    }
    PyObject *task = PyObject_CallNoArgs(ref);
    if (task == NULL || task == Py_None) {
        return task;
    }
    PyObject *name = get_name != NULL ? call_method_of(task, get_name, NULL, NULL)
                                      : PyObject_CallMethod(task, "get_name", NULL);
    Py_DECREF(task);
    if (name == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear(); /* a third-party task class without get_name */
        Py_RETURN_NONE;
    }
    if (!PyUnicode_Check(name)) {
        Py_DECREF(name);
        Py_RETURN_NONE;
    }
    return name;
}

static PyObject *
TaskInfo_name(TaskInfo *info, PyObject *Py_UNUSED(ignored))
{
    return task_name(info->ref, NULL);
}

static int
TaskInfo_traverse(TaskInfo *info, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE((PyObject *)info));
    Py_VISIT(info->creator);
    Py_VISIT(info->ref);
    return 0;
}

static int
TaskInfo_clear(TaskInfo *info)
{
    Py_CLEAR(info->creator);
    Py_CLEAR(info->ref);
    return 0;
}

static void
TaskInfo_dealloc(TaskInfo *info)
{
    PyTypeObject *type = Py_TYPE((PyObject *)info);
    PyObject_GC_UnTrack(info);
    TaskInfo_clear(info);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(info);
    Py_DECREF(type);
}

static PyMemberDef TaskInfo_members[] = {
    {"id", Py_T_LONGLONG, offsetof(TaskInfo, id), 0, NULL},
    {"creator_task", Py_T_LONGLONG, offsetof(TaskInfo, creator_task), 0, NULL},
    {"thread", Py_T_LONGLONG, offsetof(TaskInfo, thread), 0, NULL},
    {"creator", Py_T_OBJECT_EX, offsetof(TaskInfo, creator), 0, NULL},
    {"ref", Py_T_OBJECT_EX, offsetof(TaskInfo, ref), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef TaskInfo_methods[] = {
    {"name", (PyCFunction)TaskInfo_name, METH_NOARGS,
     PyDoc_STR("The asyncio task name now, or None if the task is gone.")},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot TaskInfo_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("TaskInfo(task_id, creator): spans.TaskInfo, compiled.")},
    {Py_tp_new, TaskInfo_new},
    {Py_tp_dealloc, TaskInfo_dealloc},
    {Py_tp_traverse, TaskInfo_traverse},
    {Py_tp_clear, TaskInfo_clear},
    {Py_tp_members, TaskInfo_members},
    {Py_tp_methods, TaskInfo_methods},
    {0, NULL},
};

AI_INTERNAL PyType_Spec TaskInfo_spec = {
    .name = "_accel.TaskInfo",
    .basicsize = sizeof(TaskInfo),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = TaskInfo_slots,
};

/* info.name() for any TaskInfo (a spans.TaskInfo may come from an agent we took over). */
AI_INTERNAL PyObject *
info_name(Hooks *h, PyObject *info)
{
    if (is_task_info(h, info)) {
        return task_name(((TaskInfo *)info)->ref, NAME(h, get_name));
    }
    return call_method_of(info, NAME(h, name), NULL, NULL);
}

AI_INTERNAL PyObject *
info_creator_task(Hooks *h, PyObject *info)
{
    if (is_task_info(h, info)) {
        return PyLong_FromLong(((TaskInfo *)info)->creator_task);
    }
    return PyObject_GetAttr(info, NAME(h, creator_task));
}

static PyObject *
info_creator(Hooks *h, PyObject *info)
{
    if (is_task_info(h, info)) {
        PyObject *creator = ((TaskInfo *)info)->creator;
        return Py_NewRef(creator != NULL ? creator : Py_None);
    }
    return PyObject_GetAttr(info, NAME(h, creator));
}

static PyObject *
info_ref(Hooks *h, PyObject *info)
{
    if (is_task_info(h, info)) {
        PyObject *ref = ((TaskInfo *)info)->ref;
        return Py_NewRef(ref != NULL ? ref : Py_None);
    }
    return PyObject_GetAttr(info, NAME(h, ref));
}

static int
set_info_ref(Hooks *h, PyObject *info, PyObject *ref)
{
    if (is_task_info(h, info)) {
        PyObject *old = ((TaskInfo *)info)->ref;
        ((TaskInfo *)info)->ref = Py_NewRef(ref);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(info, NAME(h, ref), ref);
}

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
        PyObject *span = PyDict_GetItemWithError(h->open, frame);
        if (span != NULL) {
            Py_DECREF(frame);
            return Py_NewRef(span);
        }
        if (PyErr_Occurred()) {
            Py_DECREF(frame);
            return NULL;
        }
        PyObject *back = PyObject_GetAttr(frame, NAME(h, f_back));
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
    PyObject *info = new_task_info((PyTypeObject *)h->info_type, h->next_task_id++, creator);
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
    Py_DECREF(own_frame);
    return info;
}

/* Tracker.task_bound: remember `task` for `info` until the task is freed. */
AI_INTERNAL int
task_bound(Hooks *h, PyObject *info, PyObject *task, PyObject *coro)
{
    PyObject *ref = PyWeakref_NewRef(task, h->forget);
    if (ref == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            return -1;
        }
        PyErr_Clear(); /* a task class without weakref support: never forgotten early */
        return set_info_ref(h, info, Py_None);
    }
    PyObject *key = NULL, *frame = NULL, *entry = NULL;
    int result = -1;
    if (set_info_ref(h, info, ref) < 0 || (key = PyLong_FromVoidPtr(task)) == NULL
        || PyDict_SetItem(h->task_infos, key, info) < 0 || (frame = coro_frame(h, coro)) == NULL
        || (entry = PyTuple_Pack(2, key, frame)) == NULL
        || PyDict_SetItem(h->task_refs, ref, entry) < 0) {
        goto done;
    }
    result = 0;
done:
    Py_DECREF(ref);
    Py_XDECREF(key);
    Py_XDECREF(frame);
    Py_XDECREF(entry);
    return result;
}

/* Tracker._forget_task: the weak reference's callback, the task was freed. */
AI_INTERNAL PyObject *
forget_task(Hooks *h, PyObject *ref)
{
    PyObject *entry = PyDict_GetItemWithError(h->task_refs, ref);
    if (entry == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    Py_INCREF(entry);
    if (PyDict_DelItem(h->task_refs, ref) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    PyObject *key = PyTuple_GetItem(entry, 0);
    PyObject *frame = PyTuple_GetItem(entry, 1);
    int failed = key == NULL || frame == NULL;
    if (!failed) {
        int known = PyDict_Contains(h->task_infos, key);
        failed = known < 0 || (known && PyDict_DelItem(h->task_infos, key) < 0);
    }
    if (!failed && frame != Py_None) {
        int known = PyDict_Contains(h->task_frames, frame);
        failed = known < 0 || (known && PyDict_DelItem(h->task_frames, frame) < 0);
    }
    Py_DECREF(entry);
    return failed ? NULL : Py_NewRef(Py_None);
}

/* Drop the entries of tasks that are gone from _task_infos (those of tasks the factory did
 * not see, which have no weakref callback; others are gone already or soon). */
static int
sweep_infos(Hooks *h)
{
    PyObject *dead = PyList_New(0), *key, *info;
    Py_ssize_t position = 0;
    if (dead == NULL) {
        return -1;
    }
    while (PyDict_Next(h->task_infos, &position, &key, &info)) {
        PyObject *ref = is_task_info(h, info) ? ((TaskInfo *)info)->ref : NULL;
        if (ref == NULL || ref == Py_None) {
            continue; /* not ours, or no weakref support: never forgotten early */
        }
        PyObject *task = PyObject_CallNoArgs(ref);
        if (task == NULL) {
            Py_DECREF(dead);
            return -1;
        }
        Py_DECREF(task);
        if (task == Py_None && PyList_Append(dead, key) < 0) {
            Py_DECREF(dead);
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_Size(dead); i++) {
        if (PyDict_DelItem(h->task_infos, PyList_GetItem(dead, i)) < 0) {
            Py_DECREF(dead);
            return -1;
        }
    }
    Py_DECREF(dead);
    Py_ssize_t left = PyDict_Size(h->task_infos);
    h->sweep_infos_at = left * 2 > SWEEP_INFOS_AT ? left * 2 : SWEEP_INFOS_AT;
    return 0;
}

/* Tracker.info_for: the TaskInfo of a task the factory did not see. Unlike Python's, its
 * weak reference has no callback (a server makes one such task per request): the entry
 * of a task that is gone is replaced if its id comes back, and swept now and then. */
AI_INTERNAL PyObject *
info_for(Hooks *h, PyObject *task)
{
    PyObject *key = PyLong_FromVoidPtr(task);
    if (key == NULL) {
        return NULL;
    }
    PyObject *info = PyDict_GetItemWithError(h->task_infos, key);
    if (info != NULL) {
        PyObject *ref = info_ref(h, info);
        PyObject *referent = ref == NULL      ? NULL
                             : ref == Py_None ? Py_NewRef(Py_None)
                                              : PyObject_CallNoArgs(ref);
        Py_XDECREF(ref);
        if (referent == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        Py_DECREF(referent); /* compared by identity only; `task` holds it */
        if (referent == task) {
            Py_DECREF(key);
            return Py_NewRef(info);
        }
    }
    else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    }
    info = new_task_info((PyTypeObject *)h->info_type, h->next_task_id++, Py_None);
    if (info == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    h->tasks_seen++;
    PyObject *ref = PyWeakref_NewRef(task, NULL);
    if (ref == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
            goto fail;
        }
        PyErr_Clear(); /* a task class without weakref support: kept until cleared */
        ref = Py_NewRef(Py_None);
    }
    PyObject *none = ((TaskInfo *)info)->ref;
    ((TaskInfo *)info)->ref = ref;
    Py_DECREF(none);
    if (PyDict_Size(h->task_infos) >= h->sweep_infos_at && sweep_infos(h) < 0) {
        goto fail;
    }
    if (PyDict_SetItem(h->task_infos, key, info) < 0) {
        goto fail;
    }
    Py_DECREF(key);
    return info;
fail:
    Py_DECREF(key);
    Py_DECREF(info);
    return NULL;
}

/* Tracker._current_task_info: a new reference to a TaskInfo, or to None. */
static PyObject *
current_task_info(Hooks *h)
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
    if (task == NULL || task == Py_None) {
        return task;
    }
    PyObject *info = info_for(h, task);
    Py_DECREF(task);
    return info;
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

/* Tracker._find_parent: new references to (parent span or None, TaskInfo or None), and
 * whether the parent awaits us in the same task. `back` is frame.f_back (borrowed). */
AI_INTERNAL int
find_parent(Hooks *h, PyObject *frame, PyObject *back, PyObject **parent_out,
            PyObject **info_out, int *same_task)
{
    *same_task = 0;
    /* Tasks created by the factory whose coroutine has not started yet: mostly none. */
    int pending = PyDict_Size(h->task_frames) > 0;
    PyObject *info = pending ? PyDict_GetItemWithError(h->task_frames, frame) : NULL;
    if (info != NULL) { /* this coroutine is the task's own: a task root */
        Py_INCREF(info);
        PyObject *creator = info_creator(h, info);
        if (creator == NULL || PyDict_DelItem(h->task_frames, frame) < 0) {
            Py_XDECREF(creator);
            Py_DECREF(info);
            return -1;
        }
        *parent_out = creator;
        *info_out = info;
        return 0;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    Py_INCREF(back);
    for (int i = 0; i < MAX_WALK && back != Py_None; i++) {
        PyObject *span = PyDict_GetItemWithError(h->open, back);
        if (span != NULL) {
            Py_DECREF(back);
            *parent_out = Py_NewRef(span);
            *info_out = Py_NewRef(Py_None);
            *same_task = 1;
            return 0;
        }
        if (PyErr_Occurred()) {
            goto fail;
        }
        info = pending ? PyDict_GetItemWithError(h->task_frames, back) : NULL;
        if (info != NULL) { /* a library coroutine runs the task; we are its first app span */
            PyObject *creator = info_creator(h, info);
            if (creator == NULL) {
                goto fail;
            }
            Py_DECREF(back);
            *parent_out = creator;
            *info_out = Py_NewRef(info);
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
        PyObject *next = PyObject_GetAttr(back, NAME(h, f_back));
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
    if (creator == NULL) {
        return -1;
    }
    info = current_task_info(h);
    if (info == NULL) {
        Py_DECREF(creator);
        return -1;
    }
    *parent_out = creator;
    *info_out = info;
    return 0;
fail:
    Py_DECREF(back);
    return -1;
}
