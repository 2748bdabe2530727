/** The parts of hpack.js (RFC 7541, Huffman included) that libs/grpc/h2-wire-server.ts uses. */
declare module 'hpack.js' {
  interface HpackDecoder {
    push(chunk: Buffer): void;
    isEmpty(): boolean;
    decodeBit(): number;
    decodeInt(): number;
    /** The string's octets (Huffman decoded when it is Huffman coded). */
    decodeStr(): number[];
  }
  interface HpackEntry {
    name: string;
    value: string;
    nameSize: number;
    valueSize: number;
  }
  interface HpackTable {
    lookup(index: number): HpackEntry;
    add(name: string, value: string, nameSize: number, valueSize: number): void;
    updateSize(size: number): void;
  }
  const hpack: {
    decoder: { create(): HpackDecoder };
    table: { create(options: { maxSize: number }): HpackTable };
  };
  export = hpack;
}
