package io.mqvirtio.net;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.nio.file.Path;
import org.junit.jupiter.api.io.TempDir;

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
}
