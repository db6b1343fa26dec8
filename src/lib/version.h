/* version.h — cprvm's version: what --version prints, what QMP's
 * query-version reports and what every state stream records in its header
 * (a reader refuses a stream from a newer major version). */
#ifndef CPRVM_VERSION_H
#define CPRVM_VERSION_H

#define CPRVM_VERSION_MAJOR 0
#define CPRVM_VERSION_MINOR 1
#ifndef CPRVM_VERSION_MICRO /* tests build a "next" cprvm with another */
#define CPRVM_VERSION_MICRO 0
#endif

#endif
