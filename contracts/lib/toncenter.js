// The toncenter v2 JSON shapes the local chain serves and the Rust client reads.
'use strict';

// A TVM stack as toncenter v2 renders it: ["num", "0x.."], ["cell", {bytes}],
// ["slice", {bytes}], ["null", null]; tuples are refused (no get-method of
// ours returns one).
function stackToToncenter(stack) {
    return stack.map((e) => {
        switch (e.type) {
            case 'int':
                return ['num', (e.value < 0n ? '-0x' + (-e.value).toString(16) : '0x' + e.value.toString(16))];
            case 'cell':
                return ['cell', { bytes: e.cell.toBoc().toString('base64') }];
            case 'slice':
                return ['slice', { bytes: e.cell.toBoc().toString('base64') }];
            case 'null':
                return ['null', null];
            default:
                throw new Error(`stack entry of type ${e.type} has no toncenter form here`);
        }
    });
}

module.exports = { stackToToncenter };
