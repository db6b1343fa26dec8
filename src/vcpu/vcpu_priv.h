/* vcpu_priv.h — what vcpu.c and vcpu_runner.c share: the run loop, which a
 * vCPU's thread runs and, during a live cpr-exec, its runner. */
#ifndef CPRVM_VCPU_PRIV_H
#define CPRVM_VCPU_PRIV_H

#include <signal.h>
#include <stdbool.h>

struct vcpu;

/* The signal that kicks a vCPU out of KVM_RUN (vcpu_kick). */
#define VCPU_KICK_SIGNAL SIGUSR1

/* The run loop, on the vCPU's thread or (runner) on its runner. A runner
 * leaves it when asked to give the vCPU back, without marking it exited. */
void vcpu_loop(struct vcpu *v, bool runner);
/* On the vCPU's thread: hand the vCPU to a runner and wait until it is
 * gone (vcpu_runner.c). */
void vcpu_hand_to_runner(struct vcpu *v);

#endif
