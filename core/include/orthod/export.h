/* orthod/export.h — symbol visibility: the library builds with hidden visibility and only
 * functions marked ORTHOD_API are exported. */
#ifndef ORTHOD_EXPORT_H
#define ORTHOD_EXPORT_H

#if defined(__GNUC__)
#define ORTHOD_API __attribute__((visibility("default")))
#define ORTHOD_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define ORTHOD_API
#define ORTHOD_PRINTF(fmt_index, first_arg)
#endif

#endif
