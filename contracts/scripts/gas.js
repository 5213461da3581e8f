// Prints the gas table (make bench).
'use strict';
const { measureGas, formatGasTable } = require('../lib/gas');

measureGas()
    .then((rows) => {
        console.log(formatGasTable(rows));
    })
    .catch((e) => {
        console.error(e);
        process.exit(1);
    });
