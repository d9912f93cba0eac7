/* sp_conn.h - placeholder */
