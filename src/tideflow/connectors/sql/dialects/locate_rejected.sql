DO $tf$
DECLARE
  _tf_pages bigint := greatest(1, pg_relation_size('@staging@')
                                  / current_setting('block_size')::bigint);
  _tf_per float8 := greatest(1.0, @n@::float8 / _tf_pages);
  _tf_page bigint := 0; _tf_w bigint := ceil(64 / _tf_per); _tf_k bigint := 0;
  _tf_after tid := '(0,0)'; _tf_to tid; _tf_bad tid; _tf_row bigint; _tf_seen bigint;
  _tf_ok boolean;
BEGIN
  DELETE FROM tf_rejected;
  PERFORM nextval('tf_rows_read');
  BEGIN
    WHILE _tf_page < _tf_pages LOOP
      _tf_to := CASE WHEN _tf_page + _tf_w >= _tf_pages THEN '(4294967295,0)'::tid
                ELSE format('(%s,0)', _tf_page + _tf_w)::tid END;
      LOOP
        _tf_seen := currval('tf_rows_read');
        _tf_ok := true;
        BEGIN
          @window@;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
          _tf_ok := false;
        END;
        EXIT WHEN _tf_ok;
        IF currval('tf_rows_read') = _tf_seen THEN RAISE SQLSTATE 'TF001'; END IF;
        SELECT s.ctid, s.@row@ INTO _tf_bad, _tf_row FROM @staging@ s
          WHERE s.ctid > _tf_after AND s.ctid < _tf_to
          ORDER BY s.ctid OFFSET currval('tf_rows_read') - _tf_seen - 1 LIMIT 1;
        IF NOT FOUND THEN RAISE SQLSTATE 'TF001'; END IF;
        BEGIN
          @before@;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
          RAISE SQLSTATE 'TF001';
        END;
        BEGIN
          @alone@;
          _tf_ok := true;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation THEN
          INSERT INTO tf_rejected VALUES (_tf_row, SQLERRM);
        END;
        IF _tf_ok THEN RAISE SQLSTATE 'TF001'; END IF;
        _tf_after := _tf_bad;
        _tf_k := _tf_k + 1;
      END LOOP;
      _tf_page := _tf_page + _tf_w;
      _tf_after := format('(%s,0)', _tf_page)::tid;
      _tf_w := CASE WHEN _tf_k = 0 THEN least(_tf_w * 2, ceil(8192 / _tf_per))
               ELSE ceil(greatest(32.0, least(8192.0, sqrt(32.0 * _tf_page * _tf_per / _tf_k)))
                         / _tf_per) END;
    END LOOP;
  EXCEPTION WHEN SQLSTATE 'TF001' THEN
    INSERT INTO tf_rejected VALUES (-1, 'the marker did not hold');
  END;
END $tf$
