package io.mqvirtio.cli;

/** The {@code mqvirtio} command. */
public final class Main {
    private Main() {}

    public static void main(String[] args) {
        System.out.println("mqvirtio");
    }
}
