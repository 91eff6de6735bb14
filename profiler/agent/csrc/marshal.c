/* The sender's SPANS body, written from the finished Spans in C (sender.py: to_wire then
 * marshal.dumps, in Python: a slice, two tuples and a marshal pass per span).
 *
 * What comes out is marshal data that marshal.loads reads as [to_wire(span), ...]: a list
 * of 20-item tuples, the events as a tuple. Only the types a record holds are written
 * (None, bool, int up to 64 bits, float, str, bytes, tuples of these); for anything else
 * the answer is None and Python does it the usual way.
 */
#include <string.h>

#include "accel.h"

/* marshal's type codes (Python/marshal.c), version 2 and later. */
#define M_NONE 'N'
#define M_FALSE 'F'
#define M_TRUE 'T'
#define M_INT 'i'
#define M_INT64 'I' /* read by marshal.loads on every CPython we serve, no longer written */
#define M_LONG 'l'
#define M_BINARY_FLOAT 'g'
#define M_STRING 's'
#define M_LIST '['
#define M_TUPLE '('
#define M_SMALL_TUPLE ')'
#define M_ASCII 'a'
#define M_SHORT_ASCII 'z'
#define M_UNICODE 'u'
#define M_LONG_SHIFT 15 /* marshal's digits are 15 bits, whatever CPython's are */
#define MAX_DEPTH 6

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ints and floats are copied as marshal writes");

typedef struct {
    char *data;
    size_t len, cap;
} Out;

static int
m_grow(Out *out, size_t more)
{
    if (out->len + more <= out->cap) {
        return 0;
    }
    size_t cap = out->cap * 2 > out->len + more ? out->cap * 2 : out->len + more + 4096;
    char *data = PyMem_Realloc(out->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = data;
    out->cap = cap;
    return 0;
}

static int
m_put_raw(Out *out, const void *data, size_t size)
{
    if (m_grow(out, size) < 0) {
        return -1;
    }
    memcpy(out->data + out->len, data, size);
    out->len += size;
    return 0;
}

static inline int
m_put_byte(Out *out, int byte)
{
    if (out->len < out->cap) {
        out->data[out->len++] = (char)byte;
        return 0;
    }
    char c = (char)byte;
    return m_put_raw(out, &c, 1);
}

/* A type code and a 32-bit value (little-endian, as marshal's w_long), at `at`. */
static inline void
m_store_i32(char *at, char code, int32_t value)
{
    uint32_t raw = (uint32_t)value;
    at[0] = code;
    memcpy(at + 1, &raw, 4);
}

static int
m_put_i32(Out *out, int32_t value)
{
    unsigned char bytes[4];
    uint32_t raw = (uint32_t)value;
    memcpy(bytes, &raw, 4);
    return m_put_raw(out, bytes, 4);
}

static int
m_put_sequence_head(Out *out, Py_ssize_t size)
{
    if (size < 256) {
        return m_put_byte(out, M_SMALL_TUPLE) < 0 || m_put_byte(out, (int)size) < 0 ? -1 : 0;
    }
    if (size > INT32_MAX) {
        return 1;
    }
    return m_put_byte(out, M_TUPLE) < 0 || m_put_i32(out, (int32_t)size) < 0 ? -1 : 0;
}

static int
m_put_digits(Out *out, const uint16_t *digits, int count, int negative)
{
    if (m_put_byte(out, M_LONG) < 0 || m_put_i32(out, negative ? -count : count) < 0) {
        return -1;
    }
    for (int i = 0; i < count; i++) {
        unsigned char bytes[2] = {(unsigned char)(digits[i] & 0xFF), (unsigned char)(digits[i] >> 8)};
        if (m_put_raw(out, bytes, 2) < 0) {
            return -1;
        }
    }
    return 0;
}

#define MAX_BIG_DIGITS 16 /* 240 bits: trace ids are 128 */

/* An int beyond 64 bits (an app's OpenTelemetry trace id): its digits by Python arithmetic. */
static int
m_put_big_int(Out *out, PyObject *value)
{
    uint16_t digits[MAX_BIG_DIGITS];
    PyObject *zero = PyLong_FromLong(0);
    int count = 0, negative = zero != NULL ? PyObject_RichCompareBool(value, zero, Py_LT) : -1;
    Py_XDECREF(zero);
    PyObject *magnitude = negative >= 0 ? PyNumber_Absolute(value) : NULL;
    PyObject *mask = PyLong_FromLong((1 << M_LONG_SHIFT) - 1);
    PyObject *shift = PyLong_FromLong(M_LONG_SHIFT);
    int result = magnitude == NULL || mask == NULL || shift == NULL ? -1 : 0;
    while (result == 0 && PyObject_IsTrue(magnitude)) {
        if (count == MAX_BIG_DIGITS) {
            result = 1;
            break;
        }
        PyObject *digit = PyNumber_And(magnitude, mask);
        PyObject *rest = digit != NULL ? PyNumber_Rshift(magnitude, shift) : NULL;
        long low = digit != NULL ? PyLong_AsLong(digit) : -1;
        Py_XDECREF(digit);
        Py_DECREF(magnitude);
        magnitude = rest;
        if (rest == NULL || (low == -1 && PyErr_Occurred())) {
            result = -1;
            break;
        }
        digits[count++] = (uint16_t)low;
    }
    Py_XDECREF(magnitude);
    Py_XDECREF(mask);
    Py_XDECREF(shift);
    return result != 0 ? result : m_put_digits(out, digits, count, negative);
}

/* A 64-bit int: 'i' if it fits 32 bits, else 'I', its 8 bytes as they are. marshal.dumps
 * writes the latter as 'l' with 15-bit digits, but marshal.loads still reads 'I' (TYPE_INT64)
 * on 3.12 to 3.14 (test_marshal_spans): a span holds ~14 such ints (ids, times), and their
 * digits were a third of the sender's marshalling. Written in place after one room check. */
static int
m_put_i64(Out *out, int64_t number)
{
    if (m_grow(out, 9) < 0) {
        return -1;
    }
    char *at = out->data + out->len;
    if (number >= INT32_MIN && number <= INT32_MAX) {
        m_store_i32(at, M_INT, (int32_t)number);
        out->len += 5;
        return 0;
    }
    uint64_t raw = (uint64_t)number;
    at[0] = M_INT64;
    memcpy(at + 1, &raw, 8);
    out->len += 9;
    return 0;
}

static int
m_put_int(Out *out, PyObject *value)
{
    int overflow;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow) {
        return m_put_big_int(out, value);
    }
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    return m_put_i64(out, number);
}

static int
m_put_str(Out *out, PyObject *value)
{
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(value, &size);
    if (text == NULL) { /* a lone surrogate: marshal writes it, we leave it to marshal */
        PyErr_Clear();
        return 1;
    }
    if (size > INT32_MAX) {
        return 1;
    }
    int ascii = 1;
    for (Py_ssize_t i = 0; i < size && ascii; i++) {
        ascii = (unsigned char)text[i] < 0x80;
    }
    int failed;
    if (ascii && size < 256) {
        failed = m_put_byte(out, M_SHORT_ASCII) < 0 || m_put_byte(out, (int)size) < 0;
    }
    else {
        failed = m_put_byte(out, ascii ? M_ASCII : M_UNICODE) < 0 || m_put_i32(out, (int32_t)size) < 0;
    }
    return failed || m_put_raw(out, text, (size_t)size) < 0 ? -1 : 0;
}

static int m_put_value(Out *out, PyObject *value, int depth);

/* The first `size` items of a list or tuple, as a tuple. */
static int
m_put_items(Out *out, PyObject *sequence, Py_ssize_t size, int depth)
{
    int head = m_put_sequence_head(out, size);
    if (head != 0) {
        return head;
    }
    int is_list = PyList_Check(sequence);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = is_list ? PyList_GetItem(sequence, i) : PyTuple_GetItem(sequence, i);
        int written = item != NULL ? m_put_value(out, item, depth + 1) : -1;
        if (written != 0) {
            return written;
        }
    }
    return 0;
}

/* 0 written, 1 a value we leave to Python's marshal, -1 error. */
static int
m_put_value(Out *out, PyObject *value, int depth)
{
    if (depth > MAX_DEPTH) {
        return 1;
    }
    if (value == Py_None) {
        return m_put_byte(out, M_NONE);
    }
    if (value == Py_True || value == Py_False) {
        return m_put_byte(out, value == Py_True ? M_TRUE : M_FALSE);
    }
    if (PyLong_CheckExact(value)) {
        return m_put_int(out, value);
    }
    if (PyUnicode_CheckExact(value)) {
        return m_put_str(out, value);
    }
    if (PyTuple_CheckExact(value)) {
        return m_put_items(out, value, PyTuple_Size(value), depth);
    }
    if (PyFloat_CheckExact(value)) {
        double number = PyFloat_AsDouble(value);
        unsigned char bytes[8];
        memcpy(bytes, &number, 8); /* little-endian IEEE 754, as marshal's w_float_bin */
        return m_put_byte(out, M_BINARY_FLOAT) < 0 || m_put_raw(out, bytes, 8) < 0 ? -1 : 0;
    }
    if (PyBytes_CheckExact(value) && PyBytes_Size(value) <= INT32_MAX) {
        return m_put_byte(out, M_STRING) < 0 || m_put_i32(out, (int32_t)PyBytes_Size(value)) < 0
                       || m_put_raw(out, PyBytes_AsString(value), (size_t)PyBytes_Size(value)) < 0
                   ? -1
                   : 0;
    }
    return 1;
}

/* The events as a flat tuple: kind, when, detail, ... */
static int
m_put_events(Out *out, Span *span)
{
    int head = m_put_sequence_head(out, 3 * (Py_ssize_t)span->nevents);
    for (int32_t i = 0; head == 0 && i < span->nevents; i++) {
        Event *event = &span->events[i];
        if (m_put_i64(out, event->kind) < 0 || m_put_i64(out, event->when) < 0) {
            return -1;
        }
        head = m_put_value(out, event->detail, 1);
    }
    return head;
}

/* The link: None, or the (trace, span) pair. */
static int
m_put_link(Out *out, Span *span)
{
    if (!span->f[LINK].i) {
        return m_put_byte(out, M_NONE);
    }
    return m_put_sequence_head(out, 2) != 0 || m_put_i64(out, span->link[0]) < 0
                   || m_put_i64(out, span->link[1]) < 0
               ? -1
               : 0;
}

/* One span's wire record, as spans.to_wire makes it: its first WIRE_FIELDS positions, the
 * events (None or a list) as a tuple. */
static int
m_put_record(Out *out, Span *span)
{
    if (m_put_sequence_head(out, WIRE_FIELDS) != 0) {
        return -1;
    }
    for (int field = 0; field < WIRE_FIELDS; field++) {
        int written = field == EVENTS                     ? m_put_events(out, span)
                      : field == LINK                     ? m_put_link(out, span)
                      : FIELD_KINDS[field] == KIND_OBJECT ? m_put_value(out, span->f[field].o, 1)
                                                          : m_put_i64(out, span->f[field].i);
        if (written != 0) {
            return written;
        }
    }
    return 0;
}

AI_INTERNAL PyObject *
marshal_spans(Hooks *h, PyObject *spans)
{
    if (!PyList_Check(spans)) {
        PyErr_SetString(PyExc_TypeError, "marshal_spans(spans): a list of spans");
        return NULL;
    }
    Py_ssize_t count = PyList_Size(spans);
    Out out = {NULL, 0, 0};
    int written = m_grow(&out, (size_t)count * 160 + 16) < 0 || count > INT32_MAX ? -1 : 0;
    if (written == 0) {
        written = m_put_byte(&out, M_LIST) < 0 || m_put_i32(&out, (int32_t)count) < 0 ? -1 : 0;
    }
    for (Py_ssize_t i = 0; written == 0 && i < count; i++) {
        PyObject *span = PyList_GetItem(spans, i);
        written = is_span(h, span) ? m_put_record(&out, SPAN(span)) : 1;
    }
    PyObject *result = written < 0   ? NULL
                       : written > 0 ? Py_NewRef(Py_None)
                                     : PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len);
    PyMem_Free(out.data);
    return result;
}
