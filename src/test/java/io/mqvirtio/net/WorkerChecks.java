package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

/**
 * What the path property tests ask of a queue pair's worker between their steps, whatever the guest did: it still
 * takes a command at once, and it sleeps while it has nothing it can do (no spin).
 */
final class WorkerChecks {
    private WorkerChecks() {}

    /** Pair 0's worker answers a command within a second (setting ring {@code ring}'s log to none, a no-op). */
    static void answersCommand(NetDevice dev, int ring, String where) {
        long t = System.nanoTime();
        dev.setLog(ring, null);
        assertThat((System.nanoTime() - t) / 1_000_000).as("ms for the worker to answer a command; " + where)
                .isLessThan(1000);
    }

    /** Then it spends under 30 ms of CPU in 60 ms {@code doing} what a sleeping worker does (nothing). */
    static void sleeps(NetDevice dev, int ring, String doing, String where) throws InterruptedException {
        answersCommand(dev, ring, where);
        long before = dev.workerCpuNanos()[0];
        Thread.sleep(60);
        long ms = (dev.workerCpuNanos()[0] - before) / 1_000_000;
        assertThat(ms).as("worker CPU over 60 ms " + doing + ", ms; " + where).isLessThan(30);
    }
}
