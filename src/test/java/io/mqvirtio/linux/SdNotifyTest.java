package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;

import java.time.Duration;
import java.util.concurrent.ThreadLocalRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** sd_notify's sending side against receivers that read, and one that never does. */
@Timeout(30)
class SdNotifyTest {
    private static String abstractName() {
        return "@mqvirtio-sdnotify-test-" + ProcessHandle.current().pid() + "-" + ThreadLocalRandom.current().nextLong();
    }

    @Test
    void aReceiverGetsEachNotification() {
        String at = abstractName();
        try (SdNotify.Listener l = SdNotify.Listener.bind(at)) {
            SdNotify.send(at, "READY=1\nSTATUS=serving");
            assertThat(l.receive(2000)).isEqualTo("READY=1\nSTATUS=serving");
        }
    }

    /**
     * A receiver that never reads: once its queue is full (net.unix.max_dgram_qlen datagrams), each notification
     * waits at most the send timeout and then fails with EAGAIN, where it waited for good in sendto (serve's main
     * thread, before READY or at STOPPING).
     */
    @Test
    void aReceiverThatNeverReadsCostsTheTimeoutNotTheSender() {
        String at = abstractName();
        try (SdNotify.Listener ignored = SdNotify.Listener.bind(at)) {
            ErrnoException refused = assertTimeoutPreemptively(Duration.ofSeconds(8), () -> {
                for (int i = 0; i < 100_000; i++) {
                    try {
                        SdNotify.send(at, "STATUS=" + i, 300);
                    } catch (ErrnoException e) {
                        return e;
                    }
                }
                return null;
            });
            assertThat(refused).as("a send fails once the queue is full").isNotNull();
            assertThat(refused.errno()).isEqualTo(ErrnoException.EAGAIN);
            long start = System.nanoTime();
            assertTimeoutPreemptively(Duration.ofSeconds(5), () -> {
                try {
                    SdNotify.send(at, "STOPPING=1", 300);
                } catch (ErrnoException e) {
                    assertThat(e.errno()).isEqualTo(ErrnoException.EAGAIN);
                }
            });
            assertThat(Duration.ofNanos(System.nanoTime() - start)).isBetween(Duration.ofMillis(250), Duration.ofSeconds(3));
        }
    }
}
