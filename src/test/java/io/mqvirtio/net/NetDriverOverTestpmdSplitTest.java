package io.mqvirtio.net;

/** The driver contract against DPDK testpmd's vhost PMD, on the split ring without IN_ORDER. */
@org.junit.jupiter.api.Tag("peer")
class NetDriverOverTestpmdSplitTest extends NetDriverOverTestpmdTest {
    @Override
    long features() {
        return NetDriver.WANTED_SPLIT & NetDriver.WANTED_ANY_ORDER;
    }
}
