/* The Hooks type, which holds the callbacks' state (hooks.c; its methods are in calls.c),
 * and the `_accel` module with its types.
 */
#include <stddef.h>

#include "accel.h"

#define AI_NAME_TEXT(n) #n,
static const char *const NAME_TEXTS[] = {AI_NAMES(AI_NAME_TEXT)};

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
        {"CODE_REJECTED", AI_CODE_REJECTED},
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
    h->s_otel_module = PyUnicode_InternFromString("opentelemetry.trace");
    if (!h->s_yield || !h->s_task_prefix || !h->s_throw_prefix || !h->s_open_limit
        || !h->s_otel_module) {
        goto fail;
    }
    /* The tracker's own containers. */
    if (!(h->open = (SpanMap *)PyObject_GetAttr(tracker, NAME(h, open)))
        || !(h->task_frames = PyObject_GetAttr(tracker, NAME(h, _task_frames)))
        || !(h->task_infos = (SpanMap *)PyObject_GetAttr(tracker, NAME(h, _task_infos)))
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
    int is_map = (PyObject *)Py_TYPE((PyObject *)h->open) == map_type
                 && (PyObject *)Py_TYPE((PyObject *)h->task_infos) == map_type
                 && !h->open->weak_keys && h->task_infos->weak_keys;
    Py_DECREF(map_type);
    if (!is_map || !PyDict_Check(h->task_frames) || !PyDict_Check(h->dropped)) {
        PyErr_SetString(PyExc_TypeError,
                        "the tracker's `open` must be a SpanMap, its `_task_infos` a SpanMap "
                        "with weak keys, its task frames and drops dicts");
        goto fail;
    }
    int64_t parent_based;
    int nslow = 0;
    if (get_item(config, "disable", &h->disable) < 0
        || get_item(config, "task_type", &h->task_type) < 0
        || get_item(config, "cancelled", &h->cancelled) < 0
        || get_item(config, "coroutine_type", &h->coroutine_type) < 0
        || get_item(config, "frame_type", &h->frame_type) < 0
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
    if (!(h->info_type = PyObject_GetAttrString(module, "TaskInfo"))
        || !(h->span_type = PyObject_GetAttrString(module, "Span"))
        || !(h->walked_codes = PyList_New(0))) {
        goto fail;
    }
    h->span_alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)h->span_type, Py_tp_alloc);
    if (!PyType_Check(h->frame_type)
        || !(h->back_descr = PyObject_GetAttr(h->frame_type, NAME(h, f_back)))) {
        PyErr_SetString(PyExc_TypeError, "frame_type must be the type of frames");
        goto fail;
    }
    h->back_get = (descrgetfunc)PyType_GetSlot(Py_TYPE(h->back_descr), Py_tp_descr_get);
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
    Py_CLEAR(h->frame_type);
    Py_CLEAR(h->back_descr);
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
    Py_CLEAR(h->s_otel_module);
    code_table_free(&h->codes);
    meter_table_free(&h->meters);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(h);
    Py_DECREF(type);
}

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

PyDoc_STRVAR(clock_tick_doc,
             "clock_tick()\n--\n\n"
             "Refit the callbacks' clock to CLOCK_MONOTONIC (the sender calls it every tick); "
             "True while it reads the time-stamp counter.");
PyDoc_STRVAR(clock_allow_doc,
             "clock_allow(allowed)\n--\n\n"
             "Whether the callbacks' clock may read the time-stamp counter (the kernel's "
             "clocksource is the TSC); True if it may on this build. Starts a new fit.");

static PyMethodDef accel_methods[] = {
    {"clock_tick", clock_tick, METH_NOARGS, clock_tick_doc},
    {"clock_allow", clock_allow, METH_O, clock_allow_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(accel_doc, "The agent's task tracker callbacks, compiled (see accelerator.py).");

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_accel",
    .m_doc = accel_doc,
    .m_size = 0,
    .m_methods = accel_methods,
    .m_slots = accel_slots,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    return PyModuleDef_Init(&accel_module);
}
