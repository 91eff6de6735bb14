/* TaskInfo: an asyncio task as the tracker knows it (spans.TaskInfo, compiled), and reading
 * any TaskInfo, ours or a Python one (taskbook.py: _forget_task; spans.py: TaskInfo.name).
 */
#include <stddef.h>
#include <string.h>

#include "accel.h"

/* -- TaskInfo ------------------------------------------------------------------------------ */

/* A TaskInfo; `creator_task` is the task of `creator` (a span, or None: 0). */
AI_INTERNAL PyObject *
new_task_info(PyTypeObject *type, int64_t task_id, PyObject *creator, int64_t creator_task)
{
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

/* del dict[key] if it maps to `value`. A map so emptied gives its table back: dicts never
 * shrink, and a burst of tasks would leave task_frames' table at its peak size for good
 * (task_infos, a SpanMap, does the same in map_discard). */
AI_INTERNAL int
discard_key(PyObject *dict, PyObject *key, PyObject *value)
{
    PyObject *found = PyDict_GetItemWithError(dict, key);
    if (found != value) {
        return found == NULL && PyErr_Occurred() ? -1 : 0;
    }
    if (PyDict_DelItem(dict, key) < 0) {
        return -1;
    }
    if (PyDict_Size(dict) == 0) {
        PyDict_Clear(dict);
    }
    return 0;
}

/* Tracker._forget_task: the task is gone; its entries go (once). */
static int
forget_task(TaskInfo *info)
{
    Hooks *h = (Hooks *)info->hooks;
    if (h == NULL) {
        return 0;
    }
    info->hooks = NULL;
    if (info->task != NULL && h->task_infos != NULL) {
        map_discard(h->task_infos, info->task, (PyObject *)info);
    }
    info->task = NULL;
    int failed = info->frame != NULL && h->task_frames != NULL
                 && discard_key(h->task_frames, info->frame, (PyObject *)info) < 0;
    Py_CLEAR(info->frame);
    Py_CLEAR(info->coro);
    if (failed && h->tracker != NULL) {
        fault(h); /* a weakref callback must not raise: counted instead */
    }
    else if (failed) {
        PyErr_Clear(); /* the tracker is gone: nobody to tell */
    }
    Py_DECREF(h);
    return failed ? -1 : 0;
}

/* The weak reference callback of a task the factory saw: info(ref) forgets it. */
static PyObject *
TaskInfo_call(TaskInfo *info, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    if (forget_task(info) < 0 && PyErr_Occurred()) {
        return NULL; /* not an Exception: KeyboardInterrupt and the like go on */
    }
    Py_RETURN_NONE;
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
    int64_t creator_task = 0;
    if (creator != Py_None) { /* a span: a Span, or a list from the pure-Python tracker */
        PyObject *task = PySequence_GetItem(creator, TASK);
        creator_task = task != NULL ? PyLong_AsLongLong(task) : -1;
        Py_XDECREF(task);
        if (creator_task == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    return new_task_info(type, task_id, creator, creator_task);
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
    Py_VISIT(info->hooks);
    Py_VISIT(info->frame);
    Py_VISIT(info->coro);
    return 0;
}

static int
TaskInfo_clear(TaskInfo *info)
{
    Py_CLEAR(info->creator);
    Py_CLEAR(info->ref);
    Py_CLEAR(info->hooks);
    info->task = NULL;
    Py_CLEAR(info->frame);
    Py_CLEAR(info->coro);
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
    {Py_tp_call, TaskInfo_call},
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

/* The pointer-sized field of `task` that holds `name`, learnt once (h->task_name_at): the
 * one field of the task's C struct (asyncio.Task's __basicsize__) pointing to the str its
 * get_name() just returned. None or two such fields: -1, never tried again. */
static void
learn_name_field(Hooks *h, PyObject *task, PyObject *name)
{
    h->task_name_at = -1;
    PyObject *size_obj = PyObject_GetAttrString(h->task_type, "__basicsize__");
    Py_ssize_t size = size_obj != NULL ? PyLong_AsSsize_t(size_obj) : -1;
    Py_XDECREF(size_obj);
    if (size < 0) {
        PyErr_Clear();
        return;
    }
    Py_ssize_t found = -1;
    for (Py_ssize_t at = 2 * (Py_ssize_t)sizeof(void *); at + (Py_ssize_t)sizeof(PyObject *) <= size;
         at += (Py_ssize_t)sizeof(PyObject *)) {
        PyObject *field;
        memcpy(&field, (char *)task + at, sizeof field);
        if (field == name) {
            if (found >= 0) {
                return;
            }
            found = at;
        }
    }
    h->task_name_at = found;
}

/* The name a live `task` keeps where it was learnt to be (borrowed): the int N of a default
 * name or a str, for a task of the exact asyncio.Task type; else NULL. */
AI_INTERNAL PyObject *
name_field(Hooks *h, PyObject *task)
{
    if (h->task_name_at <= 0 || (PyObject *)Py_TYPE(task) != h->task_type) {
        return NULL;
    }
    PyObject *name;
    memcpy(&name, (char *)task + h->task_name_at, sizeof name);
    return name != NULL && (PyLong_CheckExact(name) || PyUnicode_CheckExact(name)) ? name : NULL;
}

/* info.name() for any TaskInfo (a spans.TaskInfo may come from an agent we took over).
 *
 * C's asyncio.Task keeps a default name as the int N until the first get_name() formats
 * `Task-N` (3.12+), and the agent was its only caller: 2,500 instructions a task, ~1 % of
 * W2's CPU. So, once get_name() has shown where the name lives in a task of that exact
 * type, the name is read from there: the int N of a default name as it is (the collector
 * writes `Task-N`, wire.task_name), or the str an app gave. */
AI_INTERNAL PyObject *
info_name(Hooks *h, PyObject *info)
{
    if (!is_task_info(h, info)) {
        return call_method_of(info, NAME(h, name), NULL, NULL);
    }
    TaskInfo *task_info = (TaskInfo *)info;
    PyObject *task = task_info->task; /* alive while set: its weak reference clears it */
    PyObject *name = task != NULL ? name_field(h, task) : NULL;
    if (name != NULL) {
        return Py_NewRef(name);
    }
    name = task_name(task_info->ref, NAME(h, get_name));
    task = task_info->task;
    if (h->task_name_at == 0 && name != NULL && PyUnicode_CheckExact(name) && task != NULL
        && (PyObject *)Py_TYPE(task) == h->task_type) {
        learn_name_field(h, task, name);
    }
    return name;
}

/* N if `name` is a default task name: the int N that C's asyncio.Task keeps, or the str
 * `Task-N` its first get_name() makes of it (logging asks every record's task for its name);
 * else 0. */
AI_INTERNAL int64_t
name_number(PyObject *name)
{
    int64_t number = 0;
    if (PyLong_CheckExact(name)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(name, &overflow);
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        number = overflow || value <= 0 ? 0 : value;
    }
    else if (PyUnicode_CheckExact(name)) {
        Py_ssize_t length = PyUnicode_GetLength(name);
        if (length < 6 || length > 5 + 18 || PyUnicode_ReadChar(name, 0) != 'T') {
            return 0;
        }
        const char *text = PyUnicode_AsUTF8AndSize(name, &length); /* ASCII: its own data */
        if (text == NULL || length < 6 || memcmp(text, "Task-", 5) != 0 || text[5] == '0') {
            PyErr_Clear();
            return 0;
        }
        for (Py_ssize_t i = 5; i < length; i++) {
            if (text[i] < '0' || text[i] > '9') {
                return 0;
            }
            number = number * 10 + (text[i] - '0');
        }
    }
    return number <= INT64_MAX / 2 ? number : 0;
}

/* The N of a task's default name `Task-N` while the task has it (name_number). 0 if not
 * (another task class, a name given); -1 with an exception. Until the field is learnt
 * (info_name), the first such task is asked for its name. */
AI_INTERNAL int64_t
default_name_number(Hooks *h, PyObject *task)
{
    if ((PyObject *)Py_TYPE(task) != h->task_type || h->task_name_at < 0) {
        return 0;
    }
    if (h->task_name_at == 0) {
        PyObject *name = call_method_of(task, NAME(h, get_name), NULL, NULL);
        if (name == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return -1;
            }
            PyErr_Clear();
            return 0;
        }
        if (PyUnicode_CheckExact(name)) {
            learn_name_field(h, task, name);
        }
        Py_DECREF(name);
    }
    PyObject *name = name_field(h, task);
    return name != NULL ? name_number(name) : 0;
}

AI_INTERNAL int
info_id(Hooks *h, PyObject *info, int64_t *out)
{
    if (is_task_info(h, info)) {
        *out = ((TaskInfo *)info)->id;
        return 0;
    }
    return int_attr(info, NAME(h, id), out);
}

AI_INTERNAL int
info_creator_task(Hooks *h, PyObject *info, int64_t *out)
{
    if (is_task_info(h, info)) {
        *out = ((TaskInfo *)info)->creator_task;
        return 0;
    }
    return int_attr(info, NAME(h, creator_task), out);
}

AI_INTERNAL PyObject *
info_creator(Hooks *h, PyObject *info)
{
    if (is_task_info(h, info)) {
        PyObject *creator = ((TaskInfo *)info)->creator;
        return Py_NewRef(creator != NULL ? creator : Py_None);
    }
    return PyObject_GetAttr(info, NAME(h, creator));
}

AI_INTERNAL PyObject *
info_ref(Hooks *h, PyObject *info)
{
    if (is_task_info(h, info)) {
        PyObject *ref = ((TaskInfo *)info)->ref;
        return Py_NewRef(ref != NULL ? ref : Py_None);
    }
    return PyObject_GetAttr(info, NAME(h, ref));
}

AI_INTERNAL int
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
