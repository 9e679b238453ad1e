package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** The driver contract against our own backend (loopback): both ends ours, over a real socket and shared memory. */
class NetDriverOverLoopbackTest extends NetDriverContract {
    @TempDir
    Path dir;
    private NetDevice device;
    private VhostUserServer server;

    /** The workers' poll window ({@link NetDevice.Config#pollMicros}); 0: they sleep as soon as the rings are empty. */
    int pollMicros() {
        return 0;
    }

    @Override
    Path startBackend(int pairs) {
        device = new NetDevice(new NetDevice.Config("loop", pairs, 1500, false, new int[0], pollMicros()),
                new LoopbackBackend(pairs, 1500));
        server = VhostUserServer.listen(dir.resolve("loop.sock"), device);
        return server.path();
    }

    @Override
    void stopBackend() {
        if (server != null) {
            server.close();
        }
        if (device != null) {
            device.close();
        }
    }

    /**
     * Round trips of a few frames (send them, wait until they are back, again): the driver's RX ring always has
     * buffers to spare, so the device needs no kick when the driver posts them again. A device that left RX kicks on
     * (the packed ring's device event area as the driver zeroed it, ENABLE; a split ring's used flags without
     * EVENT_IDX) got a kick, and its worker a wake-up for nothing, every time a frame came back: one system call
     * more per receive on the driver's side. Linux's vhost-net asks for RX kicks only when it runs out of buffers.
     */
    @ParameterizedTest(name = "EVENT_IDX {0}")
    @ValueSource(booleans = {true, false})
    @Timeout(60)
    void roundTripsCostNoRxKicks(boolean eventIdx) throws Exception {
        Path sock = startBackend(1);
        long f = eventIdx ? features() : features() & ~VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX);
        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(1).withFeatures(f));
             Arena a = Arena.ofConfined()) {
            NetQueuePair q = nic.pair(0);
            MemorySegment[] frames = new MemorySegment[4];
            MemorySegment[] bufs = new MemorySegment[8];
            for (int i = 0; i < bufs.length; i++) {
                bufs[i] = a.allocate(2048);
            }
            int[] lens = new int[bufs.length];
            int rounds = 300;
            for (int r = 0; r < rounds; r++) {
                int window = 1 + r % 4;
                for (int i = 0; i < window; i++) {
                    frames[i] = frame(a, 0, r * 4 + i, 64);
                }
                assertThat(q.send(frames, 0, window)).isEqualTo(window);
                int got = 0;
                while (got < window) {
                    int n = q.receive(bufs, lens, bufs.length);
                    got += n;
                    if (n == 0) {
                        assertThat(q.awaitReceive(5000)).as("round trip %d back", r).isTrue();
                    }
                }
                assertThat(got).as("frames back in round trip %d", r).isEqualTo(window);
            }
            // 750 frames: about 3 laps of the 256-buffer RX ring, which a split ring with EVENT_IDX kicks for
            assertThat(q.rxCounters().kicks()).as("RX kicks for %d round trips (TX kicks %d)", rounds,
                    q.txCounters().kicks()).isLessThan(rounds / 10);
        }
    }
}
