/* loop.c — see loop.h. Watches live in a small array searched by fd: a VMM
 * watches a handful of fds, and lookups happen only when watches change. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/loop.h"

struct watch {
	int fd;
	loop_fd_fn fn;
	void *opaque;
	bool dead;
};

struct call {
	loop_call_fn fn;
	void *opaque;
	struct call *next;
};

struct loop {
	int epfd;
	int wakefd;
	struct watch **watches;
	int nr_watches;
	pthread_mutex_t lock;	    /* calls, quit */
	pthread_mutex_t watch_lock; /* watches[]: vCPU threads may mod fds */
	struct call *calls, **calls_tail;
	bool quit;
	int status;
};

static struct watch *loop_find(struct loop *l, int fd)
{
	for (int i = 0; i < l->nr_watches; i++)
		if (l->watches[i]->fd == fd && !l->watches[i]->dead)
			return l->watches[i];
	return NULL;
}

int loop_new(struct loop **out)
{
	struct loop *l = calloc(1, sizeof(*l));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

	if (!l)
		return -ENOMEM;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->epfd < 0 || l->wakefd < 0)
		goto out_err;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0)
		goto out_err;
	pthread_mutex_init(&l->lock, NULL);
	pthread_mutex_init(&l->watch_lock, NULL);
	l->calls_tail = &l->calls;
	*out = l;
	return 0;
out_err:
	{
		int err = -errno;
		if (l->epfd >= 0)
			close(l->epfd);
		if (l->wakefd >= 0)
			close(l->wakefd);
		free(l);
		return err;
	}
}

void loop_free(struct loop *l)
{
	if (!l)
		return;
	for (int i = 0; i < l->nr_watches; i++)
		free(l->watches[i]);
	free(l->watches);
	while (l->calls) {
		struct call *c = l->calls;
		l->calls = c->next;
		free(c);
	}
	close(l->epfd);
	close(l->wakefd);
	pthread_mutex_destroy(&l->lock);
	pthread_mutex_destroy(&l->watch_lock);
	free(l);
}

int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_fn fn, void *opaque)
{
	struct epoll_event ev = { .events = events };
	struct watch **nw, *w;
	int ret = 0;

	pthread_mutex_lock(&l->watch_lock);
	if (loop_find(l, fd)) {
		ret = -EEXIST;
		goto out;
	}
	w = calloc(1, sizeof(*w));
	nw = realloc(l->watches, (l->nr_watches + 1) * sizeof(*nw));
	if (nw)
		l->watches = nw;
	if (!w || !nw) {
		free(w);
		ret = -ENOMEM;
		goto out;
	}
	w->fd = fd;
	w->fn = fn;
	w->opaque = opaque;
	ev.data.ptr = w;
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		ret = -errno;
		free(w);
		goto out;
	}
	l->watches[l->nr_watches++] = w;
out:
	pthread_mutex_unlock(&l->watch_lock);
	return ret;
}

int loop_mod_fd(struct loop *l, int fd, uint32_t events)
{
	struct epoll_event ev = { .events = events };
	struct watch *w;
	int ret = -ENOENT;

	pthread_mutex_lock(&l->watch_lock);
	w = loop_find(l, fd);
	if (w) {
		ev.data.ptr = w;
		ret = epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
	}
	pthread_mutex_unlock(&l->watch_lock);
	return ret;
}

void loop_del_fd(struct loop *l, int fd)
{
	struct watch *w;

	pthread_mutex_lock(&l->watch_lock);
	w = loop_find(l, fd);
	if (w) {
		epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
		/* Freed after the current batch: its events may still be pending. */
		w->dead = true;
	}
	pthread_mutex_unlock(&l->watch_lock);
}

static void loop_reap(struct loop *l)
{
	int j = 0;

	pthread_mutex_lock(&l->watch_lock);
	for (int i = 0; i < l->nr_watches; i++) {
		if (l->watches[i]->dead)
			free(l->watches[i]);
		else
			l->watches[j++] = l->watches[i];
	}
	l->nr_watches = j;
	pthread_mutex_unlock(&l->watch_lock);
}

int loop_call(struct loop *l, loop_call_fn fn, void *opaque)
{
	struct call *c = malloc(sizeof(*c));
	uint64_t one = 1;

	if (!c)
		return -ENOMEM;
	c->fn = fn;
	c->opaque = opaque;
	c->next = NULL;
	pthread_mutex_lock(&l->lock);
	*l->calls_tail = c;
	l->calls_tail = &c->next;
	pthread_mutex_unlock(&l->lock);
	if (write(l->wakefd, &one, sizeof(one)) < 0)
		return 0; /* counter saturated: a wakeup is pending anyway */
	return 0;
}

void loop_quit(struct loop *l, int status)
{
	uint64_t one = 1;

	pthread_mutex_lock(&l->lock);
	if (!l->quit) {
		l->quit = true;
		l->status = status;
	}
	pthread_mutex_unlock(&l->lock);
	if (write(l->wakefd, &one, sizeof(one)) < 0)
		return;
}

static void loop_run_calls(struct loop *l)
{
	uint64_t v;
	struct call *c;

	if (read(l->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&l->lock);
	c = l->calls;
	l->calls = NULL;
	l->calls_tail = &l->calls;
	pthread_mutex_unlock(&l->lock);
	while (c) {
		struct call *next = c->next;
		c->fn(c->opaque);
		free(c);
		c = next;
	}
}

int loop_run(struct loop *l)
{
	for (;;) {
		bool quit;
		int n;

		pthread_mutex_lock(&l->lock);
		quit = l->quit;
		pthread_mutex_unlock(&l->lock);
		if (quit)
			return l->status;
		n = loop_run_once(l, -1);
		if (n < 0)
			return n;
	}
}

int loop_run_once(struct loop *l, int timeout_ms)
{
	struct epoll_event evs[16];
	int n = epoll_wait(l->epfd, evs, (int)(sizeof(evs) / sizeof(evs[0])), timeout_ms);

	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	for (int i = 0; i < n; i++) {
		struct watch *w = evs[i].data.ptr;
		if (!w)
			loop_run_calls(l);
		else if (!w->dead)
			w->fn(w->fd, evs[i].events, w->opaque);
	}
	loop_reap(l);
	return n;
}
