/* Plain C state of the accelerator: no Python objects, no GIL release, no allocation on
 * the hot path once warm.
 *
 *   CodeTable   code object address -> (code id, flags). Mirrors Tracker.code_ids, which
 *               keys by id(code) for the same reason: hashing a code object is costly. The
 *               tracker keeps every code object it registers alive (Tracker._codes), so an
 *               address cannot be reused while it is in the table.
 *   WakeTable   thread ident -> when that thread's selector last returned (Tracker._wake_times).
 *   MeterTable  (code id * 8 + state) -> span count, duration sum, histogram: what
 *               Meters.span_finished would add, kept here until Python takes it
 *               (Tracker.metrics), so a finished span costs no Python object for meters.
 */
#ifndef ASYNC_INSPECT_TABLES_H
#define ASYNC_INSPECT_TABLES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AI_MAX_BUCKETS 64
#define AI_SLOW_STEPS 3
#define AI_STATES 8
#define AI_WAKE_THREADS 64

enum {
    AI_CODE_TRACED = 1,  /* coroutines of this code become spans (code_id > 0) */
    AI_CODE_WAKE = 2,    /* a selector's select(): its return is a `wake` */
    AI_CODE_CAPTURE = 4, /* a rule captures attributes from its arguments */
    AI_CODE_RATE = 8,    /* a rule sets the sample rate of traces rooted here */
    AI_CODE_CHAIN_KNOWN = 16, /* co_flags read by a parent walk: */
    AI_CODE_CHAIN = 32,       /* the await chain goes on through its frames */
    AI_CODE_REJECTED = 64,    /* not traced, known from an earlier burst (bursts.py) */
};

static inline size_t
ai_mix(uint64_t key)
{
    key ^= key >> 29;
    key *= 0x9E3779B97F4A7C15ull;
    return (size_t)(key ^ (key >> 32));
}

/* -- code objects ------------------------------------------------------------------- */

typedef struct {
    uintptr_t key; /* 0: empty */
    int64_t code_id;
    int flags;
} CodeSlot;

typedef struct {
    CodeSlot *slots;
    size_t capacity; /* a power of two */
    size_t used;
} CodeTable;

static inline CodeSlot *
code_find(const CodeTable *table, const void *code)
{
    uintptr_t key = (uintptr_t)code;
    size_t mask = table->capacity - 1;
    size_t index = ai_mix(key) & mask;
    for (;;) {
        CodeSlot *slot = &table->slots[index];
        if (slot->key == key) {
            return slot;
        }
        if (slot->key == 0) {
            return NULL;
        }
        index = (index + 1) & mask;
    }
}

static inline int
code_table_init(CodeTable *table)
{
    table->capacity = 256;
    table->used = 0;
    table->slots = calloc(table->capacity, sizeof(CodeSlot));
    return table->slots != NULL ? 0 : -1;
}

static inline int
code_table_grow(CodeTable *table)
{
    size_t old_capacity = table->capacity;
    CodeSlot *old = table->slots;
    CodeSlot *slots = calloc(old_capacity * 2, sizeof(CodeSlot));
    if (slots == NULL) {
        return -1;
    }
    table->slots = slots;
    table->capacity = old_capacity * 2;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].key != 0) {
            size_t mask = table->capacity - 1;
            size_t index = ai_mix(old[i].key) & mask;
            while (slots[index].key != 0) {
                index = (index + 1) & mask;
            }
            slots[index] = old[i];
        }
    }
    free(old);
    return 0;
}

/* Add `flags` (and a code id, if non-zero) to the entry of `code`; -1 if out of memory. */
static inline int
code_put(CodeTable *table, const void *code, int64_t code_id, int flags)
{
    CodeSlot *slot = code_find(table, code);
    if (slot == NULL) {
        if ((table->used + 1) * 2 > table->capacity && code_table_grow(table) < 0) {
            return -1;
        }
        size_t mask = table->capacity - 1;
        size_t index = ai_mix((uintptr_t)code) & mask;
        while (table->slots[index].key != 0) {
            index = (index + 1) & mask;
        }
        slot = &table->slots[index];
        slot->key = (uintptr_t)code;
        table->used++;
    }
    if (code_id != 0) {
        slot->code_id = code_id;
    }
    slot->flags |= flags;
    return 0;
}

static inline void
code_table_free(CodeTable *table)
{
    free(table->slots);
    table->slots = NULL;
    table->capacity = table->used = 0;
}

/* -- wake times per thread ---------------------------------------------------------- */

typedef struct {
    unsigned long thread;
    int64_t woke;
} WakeSlot;

typedef struct {
    WakeSlot slots[AI_WAKE_THREADS];
    int used;
    int evict; /* round robin once full: a thread that ended long ago goes first, roughly */
} WakeTable;

static inline int64_t
wake_get(const WakeTable *table, unsigned long thread)
{
    for (int i = 0; i < table->used; i++) {
        if (table->slots[i].thread == thread) {
            return table->slots[i].woke;
        }
    }
    return 0;
}

static inline void
wake_set(WakeTable *table, unsigned long thread, int64_t when)
{
    for (int i = 0; i < table->used; i++) {
        if (table->slots[i].thread == thread) {
            table->slots[i].woke = when;
            return;
        }
    }
    int index = table->used < AI_WAKE_THREADS ? table->used++ : table->evict++ % AI_WAKE_THREADS;
    table->slots[index].thread = thread;
    table->slots[index].woke = when;
}

/* -- span meters -------------------------------------------------------------------- */

typedef struct {
    int64_t key; /* code id * 8 + state */
    int64_t count;
    int64_t sum;
    int64_t buckets[AI_MAX_BUCKETS];
} Histogram;

typedef struct {
    Histogram *items;  /* in order of first use */
    size_t used, allocated;
    int32_t *index;    /* open addressing: position in items + 1, 0 empty */
    size_t index_capacity;
    int64_t bounds[AI_MAX_BUCKETS];
    int nbounds;       /* buckets: nbounds + 1 */
    /* The rest of Meters, as deltas since Python last took them. */
    int64_t polls, busy_ns, longest_step_ns, tasks_created;
    int64_t slow_ns[AI_SLOW_STEPS], slow_steps[AI_SLOW_STEPS];
    int64_t tasks_finished[AI_STATES];
} MeterTable;

static inline int
meter_index_build(MeterTable *meters, size_t capacity)
{
    int32_t *index = calloc(capacity, sizeof(int32_t));
    if (index == NULL) {
        return -1;
    }
    free(meters->index);
    meters->index = index;
    meters->index_capacity = capacity;
    for (size_t i = 0; i < meters->used; i++) {
        size_t slot = ai_mix((uint64_t)meters->items[i].key) & (capacity - 1);
        while (index[slot] != 0) {
            slot = (slot + 1) & (capacity - 1);
        }
        index[slot] = (int32_t)(i + 1);
    }
    return 0;
}

static inline Histogram *
meter_histogram(MeterTable *meters, int64_t key)
{
    size_t mask = meters->index_capacity - 1;
    size_t slot = ai_mix((uint64_t)key) & mask;
    while (meters->index[slot] != 0) {
        Histogram *found = &meters->items[meters->index[slot] - 1];
        if (found->key == key) {
            return found;
        }
        slot = (slot + 1) & mask;
    }
    if (meters->used == meters->allocated) {
        size_t allocated = meters->allocated ? meters->allocated * 2 : 64;
        Histogram *items = realloc(meters->items, allocated * sizeof(Histogram));
        if (items == NULL) {
            return NULL;
        }
        meters->items = items;
        meters->allocated = allocated;
    }
    Histogram *histogram = &meters->items[meters->used++];
    memset(histogram, 0, sizeof(Histogram));
    histogram->key = key;
    if (meters->used * 2 > meters->index_capacity) {
        if (meter_index_build(meters, meters->index_capacity * 2) < 0) {
            meters->used--;
            return NULL;
        }
    }
    else {
        meters->index[slot] = (int32_t)meters->used;
    }
    return histogram;
}

/* bisect.bisect_left(bounds, value): the bucket of a duration. */
static inline int
meter_bucket(const MeterTable *meters, int64_t value)
{
    int low = 0, high = meters->nbounds;
    while (low < high) {
        int middle = (low + high) / 2;
        if (meters->bounds[middle] < value) {
            low = middle + 1;
        }
        else {
            high = middle;
        }
    }
    return low;
}

/* Meters.step: an outermost coroutine ran `duration` ns without yielding. */
static inline void
meter_step(MeterTable *meters, int64_t duration)
{
    if (duration > meters->longest_step_ns) {
        meters->longest_step_ns = duration;
    }
    if (duration > meters->slow_ns[0]) {
        for (int i = 0; i < AI_SLOW_STEPS; i++) {
            if (duration > meters->slow_ns[i]) {
                meters->slow_steps[i]++;
            }
        }
    }
}

/* Forget every delta (they were taken, or the tracker was cleared). */
static inline void
meter_reset(MeterTable *meters)
{
    meters->used = 0;
    if (meters->index != NULL) {
        memset(meters->index, 0, meters->index_capacity * sizeof(int32_t));
    }
    meters->polls = meters->busy_ns = meters->longest_step_ns = meters->tasks_created = 0;
    memset(meters->slow_steps, 0, sizeof(meters->slow_steps));
    memset(meters->tasks_finished, 0, sizeof(meters->tasks_finished));
}

static inline int
meter_table_init(MeterTable *meters)
{
    memset(meters, 0, sizeof(*meters));
    return meter_index_build(meters, 128);
}

static inline void
meter_table_free(MeterTable *meters)
{
    free(meters->items);
    free(meters->index);
    meters->items = NULL;
    meters->index = NULL;
    meters->used = meters->allocated = meters->index_capacity = 0;
}

#endif
