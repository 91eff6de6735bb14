/* What the Python side calls on a Hooks (accelerator.py), and its method and member tables
 * (the callbacks included, from hooks.c).
 */
#include <stddef.h>
#include <string.h>

#include "accel.h"

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
    h->running = 0;
    h->last_kind = LAST_NONE;
    Py_CLEAR(h->last_loop);
    h->have_thread = 0; /* a forked child's thread has another id */
    Py_RETURN_NONE;
}

PyDoc_STRVAR(take_dropped_doc,
             "take_dropped()\n--\n\n"
             "Finished spans dropped because the buffer was full since the last call.");

static PyObject *
Hooks_take_dropped(Hooks *h, PyObject *Py_UNUSED(ignored))
{
    int64_t count = h->buffer_full_drops;
    h->buffer_full_drops = 0;
    return PyLong_FromLongLong(count);
}

PyDoc_STRVAR(now_doc, "now()\n--\n\nThe callbacks' clock: time.perf_counter_ns() on Linux, read "
                      "through the time-stamp counter where clock.c allows.");

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

PyDoc_STRVAR(task_name_by_ref_doc,
             "task_name_by_ref(ref, task_id)\n--\n\n"
             "The name of a task known by its Task-N alone, whose span keeps `ref` (a weak "
             "reference to it) as TASK_INFO: the str or int N it holds now, N if gone.");

static PyObject *
Hooks_task_name_by_ref(Hooks *h, PyObject *const *args, Py_ssize_t nargs)
{
    long long task_id = nargs == 2 ? PyLong_AsLongLong(args[1]) : -1;
    if (nargs != 2 || !PyWeakref_CheckRef(args[0]) || task_id <= 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "task_name_by_ref(ref, task_id)");
        }
        return NULL;
    }
    return named_task_name(h, args[0], task_id);
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

#define CALLBACK(name, doc)                                                                  \
    {#name, (PyCFunction)(void (*)(void))Hooks_##name, METH_FASTCALL, PyDoc_STR(doc)}

AI_INTERNAL PyMethodDef Hooks_methods[] = {
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
    {"take_dropped", (PyCFunction)Hooks_take_dropped, METH_NOARGS, take_dropped_doc},
    {"now", (PyCFunction)Hooks_now, METH_NOARGS, now_doc},
    {"task_created", (PyCFunction)(void (*)(void))Hooks_task_created, METH_FASTCALL,
     task_created_doc},
    {"task_bound", (PyCFunction)(void (*)(void))Hooks_task_bound, METH_FASTCALL, task_bound_doc},
    {"info_for", (PyCFunction)Hooks_info_for, METH_O, info_for_doc},
    {"task_counts", (PyCFunction)Hooks_task_counts, METH_NOARGS, task_counts_doc},
    {"marshal_spans", (PyCFunction)Hooks_marshal_spans, METH_O, marshal_spans_doc},
    {"task_name_by_ref", (PyCFunction)(void (*)(void))Hooks_task_name_by_ref, METH_FASTCALL,
     task_name_by_ref_doc},
    {NULL, NULL, 0, NULL},
};

AI_INTERNAL PyMemberDef Hooks_members[] = {
    {"tasks_seen", Py_T_LONGLONG, offsetof(Hooks, tasks_seen), Py_READONLY,
     PyDoc_STR("Tasks given a TaskInfo by this object.")},
    {"next_task_id", Py_T_LONGLONG, offsetof(Hooks, next_task_id), 0,
     PyDoc_STR("The id the next TaskInfo gets.")},
    {"running", Py_T_LONGLONG, offsetof(Hooks, running), 0,
     PyDoc_STR("Spans in `open` running now; Python adds those it makes running.")},
    {"task_name_at", Py_T_PYSSIZET, offsetof(Hooks, task_name_at), Py_READONLY,
     PyDoc_STR("Where an asyncio.Task keeps its name: 0 not learnt yet, -1 not found.")},
    {NULL, 0, 0, 0, NULL},
};
