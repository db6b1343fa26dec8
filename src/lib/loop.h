/* loop.h — the main thread's epoll loop.
 *
 * Owns: fd watches (QMP, chardevs, later migration I/O) and a thread-safe queue
 * of calls that other threads (vCPUs) post to run on the main thread.
 * Invariants: callbacks run on the main thread only, one at a time; a watch
 * removed inside a callback is never called again, even later in the same batch. */
#ifndef CPRVM_LOOP_H
#define CPRVM_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>

struct loop;
typedef void (*loop_fd_fn)(int fd, uint32_t events, void *opaque);
typedef void (*loop_call_fn)(void *opaque);

int loop_new(struct loop **out);
void loop_free(struct loop *l);

/* events: EPOLLIN/EPOLLOUT (level-triggered). */
int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_fn fn, void *opaque);
int loop_mod_fd(struct loop *l, int fd, uint32_t events);
void loop_del_fd(struct loop *l, int fd);

/* Any thread: run fn(opaque) on the main thread soon. Returns 0 or -ENOMEM. */
int loop_call(struct loop *l, loop_call_fn fn, void *opaque);

/* Runs until loop_quit(); returns the status given to it. */
int loop_run(struct loop *l);
/* Waits up to timeout_ms (-1: forever) for one batch of events and runs their
 * callbacks, ignoring loop_quit(). Returns the number of events handled or
 * -errno. For tests and for code that must pump the loop itself. */
int loop_run_once(struct loop *l, int timeout_ms);
/* Any thread. */
void loop_quit(struct loop *l, int status);

#endif
