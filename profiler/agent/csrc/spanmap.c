/* SpanMap (accel.h): the open spans by frame, for an AcceleratedTracker's `open`.
 *
 * A dict hashes each frame through its type and compares through the rich comparison; the
 * callbacks look a frame up at every event. This table is keyed by the frame's address
 * (a frame in it is held, so its address cannot be reused meanwhile), with linear probing
 * and backward-shift deletion (no tombstones). Python uses it like the dict it replaces:
 * len, [frame], [frame] = span, del, in, get, pop, values, keys, clear, iteration.
 *
 * Every change to the table is complete before a reference is dropped: dropping one can
 * free a frame, run a __del__, and so start traced code whose callbacks use the table.
 *
 * `SpanMap(True)` holds its keys weakly (Hooks.task_infos: the TaskInfo of each task, by
 * the task's address): a key is an address only, never dereferenced, and its owner must
 * remove or replace the entry once the object is gone (a TaskInfo's weak reference says
 * so). Such a map does not give its keys to Python.
 */
#include "accel.h"

#define MAP_MIN 64 /* slots; always a power of two */

static inline size_t
home(const SpanMap *map, PyObject *frame)
{
    return ai_mix((uint64_t)(uintptr_t)frame) & (map->capacity - 1);
}

/* The slot of `frame`, or the empty slot where it would go. */
static inline MapSlot *
probe(const SpanMap *map, PyObject *frame)
{
    size_t mask = map->capacity - 1;
    for (size_t index = home(map, frame);; index = (index + 1) & mask) {
        MapSlot *slot = &map->slots[index];
        if (slot->frame == frame || slot->frame == NULL) {
            return slot;
        }
    }
}

AI_INTERNAL PyObject *
map_get(const SpanMap *map, PyObject *frame)
{
    return probe(map, frame)->span; /* NULL in an empty slot */
}

static int
resize(SpanMap *map, size_t capacity)
{
    MapSlot *slots = PyMem_Calloc(capacity, sizeof(MapSlot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    MapSlot *old = map->slots;
    size_t old_capacity = map->capacity;
    map->slots = slots;
    map->capacity = capacity;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].frame != NULL) {
            *probe(map, old[i].frame) = old[i];
        }
    }
    PyMem_Free(old);
    return 0;
}

/* map[frame] = span (both borrowed). */
AI_INTERNAL int
map_put(SpanMap *map, PyObject *frame, PyObject *span)
{
    if ((map->used + 1) * 4 > map->capacity * 3 && resize(map, map->capacity * 2) < 0) {
        return -1;
    }
    MapSlot *slot = probe(map, frame);
    PyObject *old = slot->span;
    if (slot->frame == NULL) {
        slot->frame = map->weak_keys ? frame : Py_NewRef(frame);
        map->used++;
    }
    slot->span = Py_NewRef(span);
    Py_XDECREF(old);
    return 0;
}

/* Empty `slot` and shift back the entries after it that probed past it. */
static void
remove_slot(SpanMap *map, MapSlot *slot)
{
    size_t mask = map->capacity - 1;
    size_t hole = (size_t)(slot - map->slots);
    for (size_t index = (hole + 1) & mask; map->slots[index].frame != NULL;
         index = (index + 1) & mask) {
        size_t wanted = home(map, map->slots[index].frame);
        /* Movable into the hole if its home is not within (hole, index]. */
        if (((index - wanted) & mask) >= ((index - hole) & mask)) {
            map->slots[hole] = map->slots[index];
            hole = index;
        }
    }
    map->slots[hole] = (MapSlot){NULL, NULL};
    map->used--;
}

/* The span `frame` maps to (a new reference), taken out; NULL, no exception, if none. */
AI_INTERNAL PyObject *
map_pop(SpanMap *map, PyObject *frame)
{
    MapSlot *slot = probe(map, frame);
    if (slot->frame == NULL) {
        return NULL;
    }
    PyObject *span = slot->span;
    remove_slot(map, slot);
    if (!map->weak_keys) {
        Py_DECREF(frame); /* the map's reference; the caller's keeps it alive */
    }
    return span;
}

/* Put an empty table of MAP_MIN slots in place of `map`'s (now empty in its count); return
 * the old table, for the caller to free; NULL, nothing changed, if out of memory (no
 * exception set: map_discard may run while one is pending). */
static MapSlot *
swap_in_small_table(SpanMap *map)
{
    MapSlot *slots = PyMem_Calloc(MAP_MIN, sizeof(MapSlot));
    if (slots == NULL) {
        return NULL;
    }
    MapSlot *old = map->slots;
    map->slots = slots;
    map->capacity = MAP_MIN;
    map->used = 0;
    return old;
}

/* del map[key] if it maps to `value` (1 if so): a weak-keyed map's owner forgetting its
 * entry. A map so emptied gives its grown table back: a burst of tasks would leave it at
 * its peak. */
AI_INTERNAL int
map_discard(SpanMap *map, PyObject *key, PyObject *value)
{
    MapSlot *slot = probe(map, key);
    if (slot->frame == NULL || slot->span != value) {
        return 0;
    }
    PyObject *gone = map_pop(map, key);
    if (map->used == 0 && map->capacity > MAP_MIN) {
        PyMem_Free(swap_in_small_table(map)); /* if out of memory, the big one stays */
    }
    Py_XDECREF(gone);
    return 1;
}

/* Forget everything, and give a grown table back. */
static int
map_clear(SpanMap *map)
{
    size_t old_capacity = map->capacity;
    MapSlot *old = swap_in_small_table(map);
    if (old == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < old_capacity; i++) {
        if (!map->weak_keys) {
            Py_XDECREF(old[i].frame);
        }
        Py_XDECREF(old[i].span);
    }
    PyMem_Free(old);
    return 0;
}

/* -- the dict protocol -------------------------------------------------------------------- */

static PyObject *
SpanMap_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    int weak_keys = 0;
    static char *keywords[] = {"weak_keys", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:SpanMap", keywords, &weak_keys)) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    SpanMap *map = (SpanMap *)alloc(type, 0);
    if (map == NULL) {
        return NULL;
    }
    map->slots = PyMem_Calloc(MAP_MIN, sizeof(MapSlot));
    if (map->slots == NULL) {
        Py_DECREF(map);
        return PyErr_NoMemory();
    }
    map->capacity = MAP_MIN;
    map->weak_keys = weak_keys;
    return (PyObject *)map;
}

static Py_ssize_t
SpanMap_length(PyObject *self)
{
    return (Py_ssize_t)((SpanMap *)self)->used;
}

static PyObject *
SpanMap_subscript(PyObject *self, PyObject *frame)
{
    PyObject *span = map_get((SpanMap *)self, frame);
    if (span == NULL) {
        PyErr_SetObject(PyExc_KeyError, frame);
        return NULL;
    }
    return Py_NewRef(span);
}

static int
SpanMap_ass_subscript(PyObject *self, PyObject *frame, PyObject *span)
{
    if (span != NULL) {
        return map_put((SpanMap *)self, frame, span);
    }
    PyObject *gone = map_pop((SpanMap *)self, frame);
    if (gone == NULL) {
        PyErr_SetObject(PyExc_KeyError, frame);
        return -1;
    }
    Py_DECREF(gone);
    return 0;
}

static int
SpanMap_contains(PyObject *self, PyObject *frame)
{
    return map_get((SpanMap *)self, frame) != NULL;
}

static PyObject *
SpanMap_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(frame, default=None)");
        return NULL;
    }
    PyObject *span = map_get((SpanMap *)self, args[0]);
    return Py_NewRef(span != NULL ? span : nargs == 2 ? args[1] : Py_None);
}

static PyObject *
SpanMap_pop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop(frame[, default])");
        return NULL;
    }
    PyObject *span = map_pop((SpanMap *)self, args[0]);
    if (span == NULL && nargs == 2) {
        return Py_NewRef(args[1]);
    }
    if (span == NULL) {
        PyErr_SetObject(PyExc_KeyError, args[0]);
    }
    return span;
}

/* A list of the frames (`values` 0) or of the spans (1): a snapshot. */
static PyObject *
snapshot(SpanMap *map, int values)
{
    if (!values && map->weak_keys) {
        PyErr_SetString(PyExc_TypeError, "a SpanMap with weak keys does not give them out");
        return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)map->used);
    Py_ssize_t at = 0;
    for (size_t i = 0; list != NULL && i < map->capacity; i++) {
        MapSlot *slot = &map->slots[i];
        if (slot->frame != NULL) {
            PyList_SetItem(list, at++, Py_NewRef(values ? slot->span : slot->frame));
        }
    }
    return list;
}

static PyObject *
SpanMap_values(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return snapshot((SpanMap *)self, 1);
}

static PyObject *
SpanMap_keys(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return snapshot((SpanMap *)self, 0);
}

static PyObject *
SpanMap_iter(PyObject *self)
{
    PyObject *keys = snapshot((SpanMap *)self, 0);
    PyObject *iterator = keys != NULL ? PyObject_GetIter(keys) : NULL;
    Py_XDECREF(keys);
    return iterator;
}

static PyObject *
SpanMap_clear_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return map_clear((SpanMap *)self) < 0 ? NULL : Py_NewRef(Py_None);
}

static int
SpanMap_traverse(PyObject *self, visitproc visit, void *arg)
{
    SpanMap *map = (SpanMap *)self;
    Py_VISIT(Py_TYPE(self));
    for (size_t i = 0; i < map->capacity; i++) {
        if (!map->weak_keys) {
            Py_VISIT(map->slots[i].frame);
        }
        Py_VISIT(map->slots[i].span);
    }
    return 0;
}

static int
SpanMap_tp_clear(PyObject *self)
{
    return map_clear((SpanMap *)self);
}

static void
SpanMap_dealloc(PyObject *self)
{
    SpanMap *map = (SpanMap *)self;
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    for (size_t i = 0; i < map->capacity; i++) {
        if (!map->weak_keys) {
            Py_XDECREF(map->slots[i].frame);
        }
        Py_XDECREF(map->slots[i].span);
    }
    PyMem_Free(map->slots);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

static PyMethodDef SpanMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))SpanMap_get, METH_FASTCALL,
     PyDoc_STR("get(frame, default=None)")},
    {"pop", (PyCFunction)(void (*)(void))SpanMap_pop, METH_FASTCALL,
     PyDoc_STR("pop(frame[, default])")},
    {"values", SpanMap_values, METH_NOARGS, PyDoc_STR("The spans, as a list.")},
    {"keys", SpanMap_keys, METH_NOARGS, PyDoc_STR("The frames, as a list.")},
    {"clear", SpanMap_clear_method, METH_NOARGS, PyDoc_STR("Forget every span.")},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot SpanMap_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("SpanMap(weak_keys=False)\n--\n\nThe open spans by frame (a "
                                  "dict, compiled); with weak_keys, TaskInfos by task.")},
    {Py_tp_new, SpanMap_new},
    {Py_tp_dealloc, SpanMap_dealloc},
    {Py_tp_traverse, SpanMap_traverse},
    {Py_tp_clear, SpanMap_tp_clear},
    {Py_tp_iter, SpanMap_iter},
    {Py_tp_methods, SpanMap_methods},
    {Py_mp_length, SpanMap_length},
    {Py_mp_subscript, SpanMap_subscript},
    {Py_mp_ass_subscript, SpanMap_ass_subscript},
    {Py_sq_length, SpanMap_length},
    {Py_sq_contains, SpanMap_contains},
    {0, NULL},
};

AI_INTERNAL PyType_Spec SpanMap_spec = {
    .name = "_accel.SpanMap",
    .basicsize = sizeof(SpanMap),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = SpanMap_slots,
};
