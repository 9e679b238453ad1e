package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.vhostuser.VhostUserServer;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The driver contract against our loopback backend whose workers poll for a while after frames moved before they
 * sleep again ({@link NetDevice.Config#pollMicros}): nothing is lost on the way between polling and sleeping.
 */
class NetDriverOverPollingLoopbackTest extends NetDriverOverLoopbackTest {
    @Override
    int pollMicros() {
        return 200;
    }

    /** 500 bursts of 4 frames, 0.3 ms apart, into a sink: the driver's kicks with a poll window of {@code micros}. */
    private long kicksFor(int micros) throws Exception {
        try (NetDevice sink = new NetDevice(new NetDevice.Config("sink", 1, 1500, false, new int[0], micros),
                new io.mqvirtio.backend.SinkBackend(1));
             VhostUserServer srv = VhostUserServer.listen(dir.resolve("sink-" + micros + ".sock"), sink);
             NetDriver nic = NetDriver.connect(srv.path(), NetDriver.Options.pairs(1)); Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            MemorySegment f = frame(a, 0, 1, 64);
            int count = 2000;
            int sent = 0;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (sent < count && System.nanoTime() < deadline) {
                sent += q.send(new MemorySegment[] {f, f, f, f}, 0, Math.min(4, count - sent));
                long until = System.nanoTime() + 300_000;
                while (System.nanoTime() < until) {
                    Thread.onSpinWait();
                }
            }
            assertThat(sent).isEqualTo(count);
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (sink.counters().get(1).packets() < count && System.nanoTime() < end) {
                Thread.sleep(1);
            }
            assertThat(sink.counters().get(1).packets()).as("frames the sink took").isEqualTo(count);
            return q.txCounters().kicks();
        }
    }

    @Test
    @Timeout(120)
    void aPollWindowSavesTheDriversKicks() throws Exception {
        long sleeping = kicksFor(0);
        long polling = kicksFor(5000);
        // a worker that sleeps as soon as its ring is empty is kicked for most of the 500 bursts; one that polls
        // 5 ms after each frame is kicked for the first burst only, or a few more when the machine preempts it
        assertThat(sleeping).as("kicks without a window").isGreaterThan(50);
        assertThat(polling).as("kicks with a 5 ms window (%d without)", sleeping).isLessThan(sleeping / 5);
    }
}
